"""Atomic file writes (kp_science.atomic_files): write_bytes_atomic, temporaries, cleanup."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from kp_science import atomic_files
from kp_science.atomic_files import remove_dead_temporaries, temporary_path, write_bytes_atomic


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_write_creates_folder_and_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a" / "b" / "x.tsv"
    assert write_bytes_atomic(target, b"one\n") is True
    assert target.read_bytes() == b"one\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.tsv"]


def test_identical_bytes_are_not_rewritten(tmp_path):
    target = tmp_path / "x.json"
    assert write_bytes_atomic(target, b"{}") is True
    os.utime(target, ns=(1_000_000_000, 1_000_000_000))
    inode = target.stat().st_ino
    assert write_bytes_atomic(target, b"{}") is False
    assert target.stat().st_mtime_ns == 1_000_000_000
    assert target.stat().st_ino == inode


def test_changed_bytes_replace_the_file(tmp_path):
    target = tmp_path / "x.json"
    write_bytes_atomic(target, b"{}")
    assert write_bytes_atomic(target, b"{} ") is True  # same prefix, other size
    assert target.read_bytes() == b"{} "
    assert write_bytes_atomic(target, b"{ }") is True  # same size, other bytes
    assert target.read_bytes() == b"{ }"


def test_failed_write_keeps_old_file_and_removes_temporary(tmp_path, monkeypatch):
    target = tmp_path / "x.tsv"
    target.write_bytes(b"old")

    def broken_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(atomic_files.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.tsv"]


def test_write_removes_temporaries_of_dead_writers_only(tmp_path):
    host = socket.gethostname()
    dead = tmp_path / f".x.tsv.tmp-{'a' * 32}-{_dead_pid()}-{host}"
    live = tmp_path / f".x.tsv.tmp-{'b' * 32}-{os.getpid()}-{host}"
    other_host = tmp_path / f".x.tsv.tmp-{'c' * 32}-{_dead_pid()}-elsewhere"
    for path in (dead, live, other_host):
        path.write_bytes(b"x")
    write_bytes_atomic(tmp_path / "x.tsv", b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, other_host.name, "x.tsv"]
    )
    assert remove_dead_temporaries(tmp_path) == []


def test_temporary_name_is_hidden_beside_target_with_pid(tmp_path):
    tmp = temporary_path(tmp_path / "x.tsv")
    assert tmp.parent == tmp_path
    assert tmp.name.startswith(".x.tsv.tmp-")
    assert f"-{os.getpid()}-{socket.gethostname()}" in tmp.name
