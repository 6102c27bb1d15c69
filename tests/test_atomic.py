"""Atomic outputs: no garbage after a SIGKILL, no clash between two writers of one output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from stages.common import atomic
from stages.common.atomic import atomic_dir

REPO = Path(__file__).resolve().parents[1]

KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from stages.common.atomic import atomic_dir
with atomic_dir(Path(sys.argv[1])) as tmp:
    (tmp / "half.bin").write_bytes(b"x" * 1000)
    os.kill(os.getpid(), signal.SIGKILL)
"""

WAITING_WRITER = """
import sys
from pathlib import Path
from stages.common.atomic import atomic_dir
with atomic_dir(Path(sys.argv[1])) as tmp:
    (tmp / "slow.bin").write_bytes(b"y")
    print(tmp, flush=True)
    sys.stdin.readline()
"""


def python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, text=True, **kwargs)


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    out = tmp_path / "out"
    killed = python(KILLED_WRITER, str(out))
    assert killed.wait() == -signal.SIGKILL
    assert [n for n in leftovers(out) if n.endswith(".tmp")]  # SIGKILL left it behind
    with atomic_dir(out) as tmp:
        (tmp / "good").write_text("ok")
    assert [n for n in leftovers(out) if n.endswith(".tmp")] == []
    assert (out / "good").read_text() == "ok"


def test_a_live_writers_temporary_is_left_alone(tmp_path):
    out = tmp_path / "out"
    waiting = python(WAITING_WRITER, str(out), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    theirs = Path(waiting.stdout.readline().strip())
    try:
        with atomic_dir(out) as tmp:
            (tmp / "mine").write_text("1")
        assert (theirs / "slow.bin").exists()
    finally:
        waiting.communicate("go\n")
    assert waiting.returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["slow.bin"]  # the last publisher wins, whole


def test_a_second_publisher_waits_for_the_first(tmp_path, monkeypatch):
    """Writer A moves the old output aside, then B publishes before A renames its own in: without
    the publish lock B's rename succeeds and A's fails (the directory is no longer empty)."""
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "v").write_text("old")
    a_moved_aside, b_done = threading.Event(), threading.Event()
    real_replace = os.replace

    def replace(src, dst):
        real_replace(src, dst)
        if threading.current_thread().name == "A" and Path(src) == out:  # the move aside
            a_moved_aside.set()
            b_done.wait(timeout=5)  # B cannot finish while A holds the lock: then A goes on

    monkeypatch.setattr(atomic.os, "replace", replace)
    errors: list[BaseException] = []

    def publish(tag: str) -> None:
        try:
            with atomic_dir(out) as tmp:
                (tmp / "v").write_text(tag)
                if tag == "B":
                    a_moved_aside.wait(timeout=5)
        except BaseException as exc:
            errors.append(exc)
        finally:
            if tag == "B":
                b_done.set()

    threads = [threading.Thread(target=publish, args=(t,), name=t) for t in "AB"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert (out / "v").read_text() in {"A", "B"}
    assert leftovers(out) == []
