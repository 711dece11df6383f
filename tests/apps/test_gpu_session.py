"""benchmarks/gpu_session.sh, the one command of a GPU session, checked on CPU: its plan and its auto step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_session.sh"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_the_dry_run_plans_every_step_in_order_with_its_limit(tmp_path):
    result = run(str(tmp_path), "all", "--dry-run", "--", "--repeats", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[1] for line in lines] == ["machine", "tests", "auto", "edits", "bench", "dispatch", "e2e"]
    assert "kernels/test_triton.py" in lines[1] and f"--junitxml={tmp_path}/tests-junit.xml" in lines[1]
    assert lines[4].endswith("--repeats 3") and "(limit 400 s)" in lines[4]
    assert not any(tmp_path.iterdir())  # nothing ran


def test_a_step_it_does_not_know_is_refused(tmp_path):
    result = run(str(tmp_path), "benchmark")
    assert result.returncode == 2 and "unknown step 'benchmark'" in result.stderr


def test_the_auto_step_writes_what_auto_chose_and_why(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "auto_choice.py"), "--out", str(tmp_path), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "VISATTN_AUTOTUNE_CACHE": str(tmp_path / "autotune.json")},
    )
    assert result.returncode == 0, result.stderr
    decisions = json.loads((tmp_path / "auto.json").read_text())["decisions"]
    assert len(decisions) == 3 and all(d["reason"] == "measured" for d in decisions.values())
    assert json.loads((tmp_path / "info.json").read_text())["autotune"]["decisions"]


def test_the_edits_step_times_the_joint_edit_three_ways(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "joint_edits.py"), "--out", str(tmp_path), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (row,) = json.loads((tmp_path / "edits.json").read_text())["shapes"].values()
    for side in ("stock", "text-block form", "materialized"):
        assert row[f"{side} ms"] > 0
    # In fp32 on the CPU both edited forms are the fp32 oracle up to rounding.
    assert row["text-block form max diff vs fp32 oracle"] <= 1e-5
    assert row["materialized max diff vs fp32 oracle"] <= 1e-5
    assert "text-block form" in result.stdout
