"""The file sink's write loop compiled (`write_lines` in `gateway/audit/_seal.c`) against
its Python loop (`FileSink.write` without it).

Both must write a batch's lines once each, in order, whatever the batch's size (past
IOV_MAX lines), resume a write cut short at its first unwritten byte, and, when a
write fails, remember exactly how far they got, so that the retry neither loses nor
repeats a byte.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

import pytest

from gateway.audit import filesink
from gateway.audit.chain import Sealed
from gateway.audit.filesink import FileSink

pytestmark = pytest.mark.skipif(filesink._write_lines is None,
                                reason="the compiled module is not built (PGWARDEN_PURE_PYTHON)")
KINDS = ["python", "compiled"]


def records(n: int, first: int = 1, width: int = 90) -> list[Sealed]:
    return [Sealed(first + i, "h", (f'{{"seq":{first + i},"pad":"' + "x" * (width + i % 7)
                                    + '"}\n').encode(), "ts", "statement", "s1")
            for i in range(n)]


def sink_on(fd: int) -> FileSink:
    """A FileSink writing to `fd`: only the state write() uses."""
    sink = FileSink.__new__(FileSink)
    sink._fd, sink._partial = fd, None
    return sink


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "python":
        monkeypatch.setattr(filesink, "_write_lines", None)
    return str(request.param)


@pytest.mark.parametrize("n", [1, 7, 1024, 1025, 2500])
def test_a_batch_is_written_once_in_order(kind: str, tmp_path: Path, n: int) -> None:
    path = tmp_path / "seg.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        batch = records(n)
        sink_on(fd).write(batch)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(r.line for r in batch)


@pytest.mark.parametrize("skip", [0, 1, 50, "line", "line+3", "last", "all"])
def test_a_write_cut_short_resumes_at_its_first_unwritten_byte(kind: str, tmp_path: Path,
                                                              skip: int | str) -> None:
    batch = records(40)
    whole = b"".join(r.line for r in batch)
    at = {"line": len(batch[0].line), "line+3": len(batch[0].line) + 3,
          "last": len(whole) - len(batch[-1].line) + 5, "all": len(whole)}.get(skip, skip)
    assert isinstance(at, int)
    path = tmp_path / "seg.jsonl"
    path.write_bytes(whole[:at])  # what the write that was cut short got out
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        sink = sink_on(fd)
        sink._partial = (batch[0].seq, at)
        sink.write(batch)
        assert sink._partial is None
    finally:
        os.close(fd)
    assert path.read_bytes() == whole


def test_a_failing_write_remembers_how_far_it_got(kind: str) -> None:
    """A pipe that fills: the write stops with EAGAIN after what it took; drained, the
    next write of the same batch sends the rest, and the reader gets every byte once."""
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETFL, fcntl.fcntl(w, fcntl.F_GETFL) | os.O_NONBLOCK)
    fcntl.fcntl(r, fcntl.F_SETFL, fcntl.fcntl(r, fcntl.F_GETFL) | os.O_NONBLOCK)
    try:
        batch = records(3000, width=200)  # ~0.7 MB, more than a pipe holds
        whole = b"".join(s.line for s in batch)
        sink = sink_on(w)
        got = bytearray()
        for _ in range(10_000):
            try:
                sink.write(batch)
                break
            except OSError as e:
                assert e.errno in (errno.EAGAIN, errno.EWOULDBLOCK)
                assert sink._partial is not None and sink._partial[0] == batch[0].seq
                assert sink._partial[1] == len(got) + pipe_held(r, got)
        else:
            pytest.fail("the batch was never written")
        while True:
            try:
                chunk = os.read(r, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            got += chunk
        assert sink._partial is None and bytes(got) == whole
    finally:
        os.close(r)
        os.close(w)


def pipe_held(r: int, got: bytearray) -> int:
    """Drain what the pipe holds into `got`; how much that was."""
    n = 0
    while True:
        try:
            chunk = os.read(r, 1 << 16)
        except BlockingIOError:
            return n
        got += chunk
        n += len(chunk)


def test_a_bad_descriptor_writes_nothing_and_says_so(kind: str) -> None:
    sink = sink_on(1 << 20)  # (no such descriptor: a closed one could be reused meanwhile)
    batch = records(3)
    with pytest.raises(OSError) as e:
        sink.write(batch)
    assert e.value.errno == errno.EBADF
    assert sink._partial == (batch[0].seq, 0)
