"""The offline examples run as a user would run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_custom_effect_example_runs_and_changes_the_image(tmp_path):
    out = tmp_path / "custom.png"
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "custom_effect.py"), "--out", str(out), "--rows", "0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "max pixel change" in result.stdout
    change = float(result.stdout.rsplit("max pixel change", 1)[1].strip(" )\n"))
    assert change > 0
    with Image.open(out) as image:
        assert image.width == 2 * image.height
