"""Grids read from position ids (Flux's ``img_ids``): counted once per ids, not once per denoiser call."""

from __future__ import annotations

import torch

from visattn.families import readers


def _flux_ids(height: int, width: int) -> torch.Tensor:
    """Flux's ``img_ids``: one ``(0, row, column)`` per packed latent token, row-major."""
    ids = torch.zeros(height, width, 3)
    ids[..., 1] = torch.arange(height)[:, None]
    ids[..., 2] = torch.arange(width)[None, :]
    return ids.reshape(height * width, 3)


def test_position_ids_are_counted_once_per_values(monkeypatch):
    """The pipeline passes the same ids at every step and equal ids at the next generation: their positions are
    counted once; ids changed in place, or of other values, are counted again and give their own grid."""
    counted = []
    count = readers._count_positions

    def counting(ids, columns, rows):
        counted.append(ids.shape)
        return count(ids, columns, rows)

    monkeypatch.setattr(readers, "_count_positions", counting)
    read = readers.READERS["img_ids"]
    ids = _flux_ids(4, 6)
    assert read(None, None, None, (), {"img_ids": ids}) == (1, 4, 6)
    assert read(None, None, None, (), {"img_ids": ids}) == (1, 4, 6)
    assert read(None, None, None, (), {"img_ids": _flux_ids(4, 6)}) == (1, 4, 6)  # the next generation's
    assert len(counted) == 1
    again = _flux_ids(4, 6)
    read(None, None, None, (), {"img_ids": again})
    again[:, 1], again[:, 2] = torch.arange(24) // 3, torch.arange(24) % 3  # rewritten in place: 8 rows of 3
    assert read(None, None, None, (), {"img_ids": again}) == (1, 8, 3)
    assert read(None, None, None, (), {"img_ids": _flux_ids(2, 3)}) == (1, 2, 3)
    assert len(counted) == 3
