"""The one atomic writer and the one output-path check that every command's outputs go through."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clothprobe._util.files import atomic_path, atomic_write, pid_alive, stale_by_pid, write_text_atomic
from clothprobe._util.outputs import check_output
from clothprobe.errors import ClothprobeError


def test_atomic_write_replaces_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "scores.csv"
    write_text_atomic(target, "old\n")
    with pytest.raises(RuntimeError), atomic_write(target) as fh:
        fh.write("half a new fi")
        raise RuntimeError("disk full")
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["scores.csv"]
    with atomic_write(target, "wb") as fh:
        fh.write(b"new\n")
    assert target.read_bytes() == b"new\n" and os.listdir(tmp_path) == ["scores.csv"]


def test_a_killed_writer_leaves_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_text_atomic(target, "{}\n")
    code = ("import os, sys; from clothprobe._util.files import atomic_write\n"
            f"with atomic_write({str(target)!r}) as fh:\n    fh.write('[1, 2'); fh.flush(); os._exit(9)\n")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    assert target.read_text() == "{}\n"


def test_atomic_path_for_libraries_that_want_a_name(tmp_path: Path) -> None:
    target = tmp_path / "a.npy"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_bytes(b"x")
        assert not target.exists()
    assert target.read_bytes() == b"x"


def test_check_output_refuses_what_is_not_ours(tmp_path: Path) -> None:
    photo = tmp_path / "shirt.jpg"
    photo.write_bytes(b"\xff\xd8")
    with pytest.raises(ClothprobeError, match="is a folder"):
        check_output(tmp_path)
    with pytest.raises(ClothprobeError, match="does not exist"):
        check_output(tmp_path / "nope" / "a.csv")
    with pytest.raises(ClothprobeError, match="one of this command's inputs"):
        check_output(photo, inputs=[photo], ours=lambda p: True)
    with pytest.raises(ClothprobeError, match="was not written by this command"):
        check_output(photo)
    assert check_output(photo, ours=lambda p: True) == photo
    assert check_output(tmp_path / "new.csv") == tmp_path / "new.csv"


def test_pid_alive_and_leftovers_of_dead_writers() -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    pid = int(dead.stdout)
    assert pid_alive(os.getpid()) and not pid_alive(pid)
    assert stale_by_pid(f".f.h5.tmp-{pid}") and stale_by_pid(f".last.keras.tmp-{pid}.keras")
    assert not stale_by_pid(f".f.h5.tmp-{os.getpid()}") and not stale_by_pid(".f.h5.tmp-notes")


def test_atomic_path_keeps_a_suffix_for_libraries_that_read_it(tmp_path: Path) -> None:
    target = tmp_path / "last.keras"
    with atomic_path(target, suffix=".keras") as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".keras") and tmp != target
        tmp.write_bytes(b"model")
    assert target.read_bytes() == b"model" and sorted(p.name for p in tmp_path.iterdir()) == ["last.keras"]
