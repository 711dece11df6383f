"""``visattn bench``: the quick CPU run writes a complete report, and the derived figures are consistent."""

from __future__ import annotations

import json

import pytest

from visattn import bench
from visattn.bench.end_to_end import wan_forward
from visattn.cli import main
from visattn.kernels import NeighborhoodPattern, density


def test_configurations_follow_the_models():
    full = {c.name: c for c in bench.configurations()}
    flux = full["flux-1024/dense"]
    assert (flux.image_tokens, flux.text_tokens, flux.heads, flux.head_dim) == (4096, 512, 24, 128)
    wan = full["wan2.1-1.3b-480p-81f/dense"]
    assert (wan.tokens, wan.heads) == (32_760, 12)
    assert full["wan2.1-14b-480p-81f/dense"].heads == 40
    assert full["sdxl-4096/dense"].tokens == 4096
    # the sparse neighborhood configurations of the targets keep at most a quarter of the pairs
    na = full["sdxl-4096/na-31x31"].pattern()
    assert isinstance(na, NeighborhoodPattern)
    assert density(na, 4096, tile=(128, 128)).kept_fraction <= 0.25


def test_unknown_model_or_method_is_a_usage_error(tmp_path, capsys):
    assert main(["bench", "--quick", "--models", "nope", "--out", str(tmp_path)]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["bench", "--quick", "--methods", "fast", "--out", str(tmp_path)]) == 2
    assert "fast" in capsys.readouterr().err


def test_quick_bench_writes_json_markdown_and_chart(tmp_path, capsys):
    status = main(
        [
            "bench",
            "--quick",
            "--models",
            "wan-quick",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--quiet",
            "--out",
            str(tmp_path),
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out.split()
    assert sorted(p.rsplit(".", 1)[1] for p in printed) == ["json", "md", "png"]
    report = json.loads((tmp_path / "bench-quick.json").read_text())
    assert report["environment"]["packages"]["torch"]
    results = {(r["config"], r["method"]): r for r in report["results"]}
    dense = results[("wan-quick/dense", "sdpa")]
    assert dense["speedup_vs_dense"] == pytest.approx(1.0)
    sparse = results[("wan-quick/na-3x3x3", "reference")]
    # x dense and density efficiency follow from the timings and the exact density
    assert sparse["speedup_vs_dense"] == pytest.approx(dense["ms"] / sparse["ms"])
    assert sparse["density_efficiency"] == pytest.approx(sparse["speedup_vs_dense"] * sparse["density"])
    assert sparse["density"] == pytest.approx(27 / 192)  # a 3x3x3 window in a 4x6x8 grid
    assert sparse["max_abs_diff_vs_flex"] < 1e-5  # the reference and FlexAttention agree
    # methods that cannot run say why instead of disappearing
    assert "dense only" in results[("wan-quick/na-3x3x3", "sdpa")]["note"]
    assert "| wan-quick/na-3x3x3 | reference | forward |" in (tmp_path / "bench-quick.md").read_text()


def test_backward_pass_is_timed_against_dense_backward_and_cross_checked_with_flex():
    from visattn.bench import configurations, run_benchmark

    configs = [c for c in configurations(quick=True, models=["flux-quick"])]
    results = run_benchmark(
        configs,
        methods=["sdpa", "flex", "reference"],
        repeats=1,
        warmup=0,
        tile=(16, 16),
        backward=True,
        progress=False,
    )
    rows = {(r.config, r.method, r.direction): r for r in results}
    assert {r.direction for r in results} == {"forward", "backward"}
    dense = rows[("flux-quick/dense", "sdpa", "backward")]
    assert dense.ms > 0 and dense.speedup_vs_dense == pytest.approx(1.0)
    sparse = rows[("flux-quick/na-5x5", "reference", "backward")]
    assert sparse.speedup_vs_dense == pytest.approx(dense.ms / sparse.ms)
    assert sparse.density_efficiency == pytest.approx(sparse.speedup_vs_dense * sparse.density)
    # backward FLOPs are 2.5x the forward's for the same kept pairs
    forward = rows[("flux-quick/na-5x5", "reference", "forward")]
    assert sparse.tflops * sparse.ms == pytest.approx(2.5 * forward.tflops * forward.ms)
    # FlexAttention times its forward on CPU but has no CPU backward: the row says so instead of disappearing
    assert rows[("flux-quick/na-5x5", "flex", "forward")].ms is not None
    assert "backward on CPU" in rows[("flux-quick/na-5x5", "flex", "backward")].note


def test_wan_end_to_end_quick_runs_each_variant():
    from visattn.effects import NeighborhoodAttention

    result = wan_forward(
        quick=True,
        repeats=1,
        warmup=0,
        progress=False,
        effects={"dense": [], "neighborhood": [NeighborhoodAttention(kernel_size=(3, 3, 5))]},
    )
    assert set(result["seconds"]) == {"dense", "neighborhood"}
    assert result["speedup_vs_dense"]["dense"] == pytest.approx(1.0)
    assert all(s > 0 for s in result["seconds"].values())


def test_full_wan_forward_needs_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present: the full forward is a benchmark, not a test")
    with pytest.raises(ValueError, match="CUDA"):
        wan_forward(quick=False, progress=False)


def test_tgate_timing_quick(tmp_path, capsys):
    status = main(
        ["bench", "--quick", "--models", "flux-quick", "--methods", "sdpa", "--repeats", "1", "--warmup", "0"]
        + ["--tgate", "--quiet", "--out", str(tmp_path)]
    )
    assert status == 0
    report = json.loads((tmp_path / "bench-quick.json").read_text())
    tgate = report["tgate"]
    assert set(tgate["seconds"]) == {"dense", "tgate"}
    assert tgate["speedup"] == pytest.approx(tgate["seconds"]["dense"] / tgate["seconds"]["tgate"])


def test_bar_chart_uses_a_log_axis_when_bars_span_more_than_ten_times():
    from visattn.charts import grouped_bar_chart, wants_log_axis

    assert wants_log_axis([1.2, 70.0, 1.5]) and not wants_log_axis([0.3, 0.9, 1.0])
    assert not wants_log_axis([0.0, 70.0])  # a zero bar cannot sit on a log axis: linear
    groups = ["na2d 64x64 k7", "radial 33 frames"]
    wide = grouped_bar_chart(groups, {"flex": [1.2, 70.0], "triton": [1.1, None]}, title="t", axis_label="x dense")
    linear = grouped_bar_chart(groups, {"flex": [1.2, 70.0], "triton": [1.1, None]}, title="t", axis_label="x dense",
                               log_scale=False)  # fmt: skip
    assert wide.mode == "RGB" and wide.size == linear.size and wide.tobytes() != linear.tobytes()
    with pytest.raises(ValueError, match="positive"):
        grouped_bar_chart(groups, {"flex": [0.0, 2.0]}, title="t", axis_label="x", log_scale=True)
