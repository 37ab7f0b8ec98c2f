"""The default sink: JSON-lines segment files in one directory.

Files are ``audit-<instance>-<n>.jsonl`` (``n``: 6 digits or more, from 1), one chain
per instance, each file starting with its ``segment`` record. A lock file
``.audit-<instance>.lock`` (``flock``) keeps two processes off one instance's chain: give
every worker process its own instance id.

Resuming after a restart reads the last line of the newest segment. A partial last line
(the process died mid-write) is removed and counted in the next segment's header
(``torn_bytes``); a last line that does not hash correctly stops the start
(:class:`AuditError`): someone must look at it. The new run always opens a new segment.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from gateway import logs, native

from .canonical import GENESIS, MAX_LINE, chain_hash, hashed_body, parse_line
from .chain import Sealed
from .writer import AuditError, ResumeState

__all__ = ["SEGMENT_RE", "FileSink", "list_segments", "segment_name"]

SEGMENT_RE = re.compile(r"^audit-(?P<instance>[A-Za-z0-9._-]+)-(?P<n>\d{6,})\.jsonl$")
INSTANCE_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_TAIL_CHUNK = 64 * 1024
_IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024) if hasattr(os, "sysconf") else 16
# The write loop below, compiled (`write_lines` in _seal.c): tests/test_audit_filesink_native.py
_seal = native.load("gateway.audit._seal")
_write_lines = getattr(_seal, "write_lines", None)


def segment_name(instance: str, n: int) -> str:
    return f"audit-{instance}-{n:06d}.jsonl"


def list_segments(directory: str | os.PathLike[str]) -> dict[str, list[tuple[int, Path]]]:
    """{instance: [(n, path), ...] sorted by n} for the segment files in `directory`."""
    out: dict[str, list[tuple[int, Path]]] = {}
    for entry in os.scandir(directory):
        m = SEGMENT_RE.match(entry.name)
        if m and entry.is_file():
            out.setdefault(m["instance"], []).append((int(m["n"]), Path(entry.path)))
    for segs in out.values():
        segs.sort()
    return out


def _tail(path: Path) -> tuple[bytes | None, bytes, int]:
    """(last complete line without its newline, or None; partial bytes after it; size).
    Each byte is read once, from the end; a line longer than any record is an AuditError
    (a crafted file must not hold the start for hours, or fill memory)."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        nl = _newline_before(f, size, path)
        f.seek(nl + 1)
        torn = f.read(size - nl - 1)
        if nl < 0:
            return None, torn, size
        start = _newline_before(f, nl, path) + 1
        f.seek(start)
        return f.read(nl - start), torn, size


def _newline_before(f: BinaryIO, end: int, path: Path) -> int:
    """The offset of the last newline before `end`, or -1 (none: the file's start)."""
    pos = end
    while pos > 0:
        step = min(_TAIL_CHUNK, pos)
        pos -= step
        f.seek(pos)
        found = f.read(step).rfind(b"\n")
        if found >= 0:
            return pos + found
        if end - pos > MAX_LINE:
            raise AuditError(f"{path}: its last line is longer than any audit record "
                             f"({MAX_LINE >> 20} MiB); run `pgwarden audit verify` before "
                             "starting the gateway")
    return -1


def _parse_tail(line: bytes, where: str) -> tuple[int, str, bool]:
    """(seq, hash, whether it is a final checkpoint) of the last record line."""
    parsed = parse_line(line)
    if parsed is None:
        raise AuditError(f"{where}: the last audit record is damaged (not a record line); "
                         "run `pgwarden audit verify` before starting the gateway")
    rec, body, stored = parsed
    prev, seq = rec.get("prev"), rec.get("seq")
    if not isinstance(prev, str) or not isinstance(seq, int) or chain_hash(prev, body) != stored:
        raise AuditError(f"{where}: the last audit record does not match its hash; "
                         "run `pgwarden audit verify` before starting the gateway")
    return seq, stored, rec.get("type") == "checkpoint" and rec.get("final") is True


class FileSink:
    kind = "file"
    segments = True

    def __init__(self, directory: str | os.PathLike[str], instance: str, *,
                 fsync: bool = False, file_mode: int = 0o640) -> None:
        if not INSTANCE_RE.match(instance):
            raise AuditError(f"audit instance id {instance!r}: use 1-64 letters, digits, "
                             "'.', '_' or '-'")
        self.directory = Path(directory)
        self.instance = instance
        self.fsync = fsync
        self.file_mode = file_mode
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._name: str | None = None
        self._partial: tuple[int, int] | None = None  # (first seq of a batch, bytes written)
        # Segments closed by a rotation, for retire() on the writer thread. (A deque: the
        # thread that rotates appends while the writer thread pops, without a lock.)
        self._closed: deque[tuple[int, str]] = deque()

    # -- start ---------------------------------------------------------------------------

    def acquire(self) -> ResumeState | None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        lock_path = self.directory / f".audit-{self.instance}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AuditError(f"{lock_path}: another process writes audit instance "
                             f"{self.instance!r} (give each gateway worker its own id)") from None
        self._lock_fd = fd
        segs = list_segments(self.directory).get(self.instance, [])
        reuse: int | None = None
        torn_total = 0
        while segs:
            n, path = segs[-1]
            line, torn, size = _tail(path)
            if torn and hashed_body(torn) is not None:
                try:  # a whole record that only lacks its newline: keep it
                    seq, digest, sealed = _parse_tail(torn, str(path))
                except AuditError:
                    pass
                else:
                    with open(path, "ab") as f:
                        f.write(b"\n")
                    return ResumeState(seq, digest, reuse or n + 1, path.name, torn_total,
                                       sealed)
            if torn:
                os.truncate(path, size - len(torn))
                torn_total += len(torn)
            if line is None:  # empty: created but never written, or only a torn line
                reuse = n
                segs.pop()
                continue
            seq, digest, sealed = _parse_tail(line, str(path))
            return ResumeState(seq, digest, reuse or n + 1, path.name, torn_total,
                               sealed and not torn_total)
        return ResumeState(0, GENESIS, reuse or 1, None, torn_total)

    # -- the writer thread ---------------------------------------------------------------

    def location(self, n: int) -> str:
        return segment_name(self.instance, n)

    def open_segment(self, n: int) -> None:
        name = segment_name(self.instance, n)
        path = self.directory / name
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            fd = os.open(path, flags | os.O_EXCL, self.file_mode)
        except FileExistsError:
            if path.stat().st_size != 0:
                raise AuditError(f"{path}: segment exists already") from None
            fd = os.open(path, flags, self.file_mode)
        if self._fd is not None:  # retire() syncs and closes it, off the caller's thread
            self._closed.append((self._fd, self._name or "?"))
        self._fd = fd
        self._name = name
        self._partial = None
        if self.fsync:
            dfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def write(self, batch: Sequence[Sealed]) -> None:
        if self._fd is None:
            raise AuditError("no open audit segment")
        first = batch[0].seq
        done = self._partial[1] if self._partial and self._partial[0] == first else 0
        if _write_lines is not None and type(batch) is list:
            written, err = _write_lines(self._fd, batch, done)
            if err:  # (exact: what it wrote before the error)
                self._partial = (first, done + written)
                raise OSError(err, os.strerror(err))
            self._partial = None
            return
        lines = [s.line for s in batch]
        if not done:
            # The usual case: all of it, gathered from the lines themselves, IOV_MAX at a
            # time (joining them first would copy every record once more, and a timer's
            # batch of a second's records is megabytes, joined holding the GIL).
            try:
                for k in range(0, len(lines), _IOV_MAX):
                    chunk = lines[k : k + _IOV_MAX]
                    n = os.writev(self._fd, chunk)
                    done += n
                    if n < sum(map(len, chunk)):
                        break  # cut short: the rest from `done` on, below
                else:
                    self._partial = None
                    return
            except BaseException:  # (a failed writev wrote nothing: `done` is exact)
                self._partial = (first, done)
                raise
        data = b"".join(lines)
        view = memoryview(data)
        try:
            while done < len(data):
                done += os.write(self._fd, view[done:])
        finally:
            self._partial = (first, done) if done < len(data) else None

    def sync(self) -> None:
        if self._fd is not None:
            os.fdatasync(self._fd)

    def retire(self) -> None:
        """Sync the segments closed since the last call and drop their pages from the OS's
        cache, as PostgreSQL does with a finished WAL segment: a log nobody reads back
        must not fill memory and evict what the database on the same host caches, and a
        closed segment reaches the disk now rather than up to ~30 s later. A page is only
        dropped once written, so nothing of the log can be lost by it. It may block for
        as long as the disk takes: the writer thread calls it, outside the write lock."""
        while self._closed:
            fd, name = self._closed.popleft()
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            except OSError as e:  # the records were written (durability: os); say so loudly
                logs.error("audit.segment_sync_failed", segment=name, error=str(e))
            finally:
                os.close(fd)

    def close(self) -> None:
        self.retire()
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
