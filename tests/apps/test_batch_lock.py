"""One ``visattn batch`` launch per output folder (:mod:`visattn.batch.lock`), and a start-up clean-up that only
removes temporary files of this process or of dead ones (issue 27)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import visattn.batch.lock as lock_module
from visattn.batch import run_batch
from visattn.batch.lock import LOCK_NAME, FolderLocked, OutputLock, host_name
from visattn.batch.outputs import partial_owner, remove_partials, write_bytes_atomic
from visattn.tiny import tiny_pipeline

REPO = Path(__file__).resolve().parents[2]
FAST = {"steps": 2, "height": 32, "width": 32}


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def holder(tmp_path):
    """Start a separate Python process that holds the lock of ``folder``; yields (process, folder)."""
    started = []

    def start(folder: Path) -> subprocess.Popen:
        code = (
            "import sys, time; from visattn.batch.lock import OutputLock; "
            f"OutputLock({str(folder)!r}).acquire(); print('locked', flush=True); time.sleep(120)"
        )
        process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
        started.append(process)
        assert process.stdout.readline().strip() == "locked"
        return process

    yield start
    for process in started:  # only the processes this fixture started, by their own handle
        if process.poll() is None:
            process.kill()
        process.wait()


def test_a_second_lock_on_a_folder_is_refused_naming_the_owner(tmp_path):
    first = OutputLock(tmp_path).acquire()
    owner = json.loads((tmp_path / LOCK_NAME).read_text())
    assert owner["pid"] == os.getpid() and owner["host"] == host_name()
    with pytest.raises(FolderLocked, match=rf"in use by another visattn batch run \(pid {os.getpid()} on host"):
        OutputLock(tmp_path).acquire()
    first.release()
    assert not (tmp_path / LOCK_NAME).exists()
    with OutputLock(tmp_path):  # free again
        assert (tmp_path / LOCK_NAME).is_file()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_stale_lock_file_of_a_dead_process_is_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead_pid(), "host": host_name(), "started": "earlier"}))
    with OutputLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_without_advisory_locks_ownership_is_decided_by_pid_and_host(tmp_path, monkeypatch):
    monkeypatch.setattr(lock_module, "fcntl", None)  # the Windows path
    path = tmp_path / LOCK_NAME
    path.write_text(json.dumps({"pid": dead_pid(), "host": host_name()}))
    with OutputLock(tmp_path):  # a dead owner on this host: taken over
        assert json.loads(path.read_text())["pid"] == os.getpid()
        with pytest.raises(FolderLocked, match="in use"):
            OutputLock(tmp_path).acquire()
    path.write_text(json.dumps({"pid": os.getppid(), "host": host_name()}))  # alive
    with pytest.raises(FolderLocked, match=f"pid {os.getppid()}"):
        OutputLock(tmp_path).acquire()
    path.write_text(json.dumps({"pid": 1234, "host": "elsewhere"}))  # cannot be checked from here
    with pytest.raises(FolderLocked, match="if that process is gone, delete"):
        OutputLock(tmp_path).acquire()


def test_a_second_batch_on_a_folder_in_use_is_refused_and_writes_nothing(tmp_path, holder):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": "a", "prompt": "a red circle", **FAST}) + "\n")
    out = tmp_path / "out"
    other = holder(out)
    (out / f".a.png.{other.pid}@{host_name()}.partial").write_bytes(b"being written")  # the other run's file
    pipe = tiny_pipeline("unet")
    with pytest.raises(FolderLocked, match=f"pid {other.pid} on host"):
        run_batch(jobs, out, pipeline=pipe, progress=False, log=io.StringIO())
    assert sorted(p.name for p in out.iterdir()) == sorted([LOCK_NAME, f".a.png.{other.pid}@{host_name()}.partial"])
    # A dry run writes nothing and may look.
    assert run_batch(jobs, out, pipeline=pipe, dry_run=True, log=io.StringIO()).pending == ["a"]

    # The owner dies without cleaning up (kill -9): its lock is taken over, its temporary file removed.
    other.send_signal(signal.SIGKILL)
    other.wait()
    summary = run_batch(jobs, out, pipeline=pipe, progress=False, log=io.StringIO())
    assert summary.exit_status == 0 and summary.ran == 1
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a.png", "results.jsonl", "results.rank0.jsonl"]


def test_the_cli_reports_a_folder_in_use_in_one_line(tmp_path, holder):
    from visattn.cli import main

    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"prompt": "a red circle", **FAST}) + "\n")
    holder(tmp_path / "out")
    err = io.StringIO()
    sys_stderr, sys.stderr = sys.stderr, err
    try:
        status = main(["batch", str(jobs), "--out", str(tmp_path / "out"), "--model", "visattn/tiny-sd", "--quiet"])
    finally:
        sys.stderr = sys_stderr
    assert status == 2 and "visattn batch: error: output folder" in err.getvalue() and "Traceback" not in err.getvalue()


def test_start_up_clean_up_removes_only_its_own_and_dead_processes_files(tmp_path, holder):
    live = holder(tmp_path / "elsewhere").pid
    gone, here = dead_pid(), host_name()
    names = {
        "mine": f".a.png.{os.getpid()}@{here}.partial",
        "dead": f".b.png.{gone}@{here}.partial",
        "old-format dead": f".c.png.{gone}.partial",
        "live": f".d.png.{live}@{here}.partial",
        "other host": f".e.png.{gone}@another-host.partial",
        "not ours": ".f.png.partial",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    removed = {path.name for path in remove_partials(tmp_path)}
    assert removed == {names["mine"], names["dead"], names["old-format dead"]}
    assert partial_owner(tmp_path / names["live"]) == (live, here)
    assert partial_owner(tmp_path / names["old-format dead"]) == (gone, None)
    assert partial_owner(tmp_path / names["not ours"]) is None


def test_temporary_files_name_their_writer(tmp_path, monkeypatch):
    seen = []
    original = os.replace

    def spying(source, target):
        seen.append(Path(source).name)
        return original(source, target)

    monkeypatch.setattr(os, "replace", spying)
    write_bytes_atomic(tmp_path / "x.json", b"{}")
    assert seen == [f".x.json.{os.getpid()}@{host_name()}.partial"]
    assert partial_owner(seen[0]) == (os.getpid(), host_name())


def test_a_lock_waiting_on_a_deleted_file_tries_again(tmp_path, monkeypatch):
    """The owner deletes the file on release; a process that opened it just before must not keep a lock on the
    deleted file (a third process would then lock a new file at the same path)."""
    first = OutputLock(tmp_path).acquire()
    opened = os.open(tmp_path / LOCK_NAME, os.O_RDWR)  # a contender that opened the file before the release
    first.release()
    try:
        time.sleep(0.01)
        with OutputLock(tmp_path) as second:  # a new file, locked
            assert (tmp_path / LOCK_NAME).is_file()
            assert os.path.samestat(os.stat(tmp_path / LOCK_NAME), os.fstat(second._fd))
            assert not os.path.samestat(os.fstat(opened), os.fstat(second._fd))
    finally:
        os.close(opened)


def test_an_output_folder_that_cannot_be_used_is_a_usage_error(tmp_path):
    from visattn.generate import UsageError

    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"prompt": "a red circle", **FAST}) + "\n")
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(UsageError, match="cannot use output folder .*a-file"):
        run_batch(jobs, tmp_path / "a-file", pipeline=tiny_pipeline("unet"), progress=False, log=io.StringIO())
