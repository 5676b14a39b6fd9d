"""``idgen.files.read_bounded``, the one way idgen reads a file: the bound exactly, and never a wait."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from idgen.errors import InvalidInput
from idgen.files import read_bounded


def test_a_file_at_the_bound_is_read_and_one_byte_more_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    assert read_bounded(path, 100, "the file") == b"x" * 100
    with pytest.raises(InvalidInput, match=r"^the file is longer than 99 bytes$"):
        read_bounded(path, 99, "the file")


def test_a_fifo_is_refused_at_once_with_or_without_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(InvalidInput, match="is not a regular file"):
        read_bounded(fifo, 10, "the fifo")  # no writer: a blocking open would wait for one for ever
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    writer = os.open(fifo, os.O_WRONLY)  # a writer with data waiting, as `<(echo user:pw)` would have
    try:
        os.write(writer, b"user:pw")
        with pytest.raises(InvalidInput, match="is not a regular file"):
            read_bounded(fifo, 10, "the fifo")
    finally:
        os.close(writer)
        os.close(reader)


def test_the_check_sees_the_file_that_is_read(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"data")
    seen: list[int] = []
    assert read_bounded(path, 10, "f", lambda fd, status: seen.append(status.st_ino)) == b"data"
    assert seen == [path.stat().st_ino]


def test_a_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_bounded(tmp_path / "none", 10, "f")
