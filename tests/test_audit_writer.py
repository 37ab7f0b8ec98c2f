"""The audit writer: group commit, durability, fail-closed health and recovery."""

from __future__ import annotations

import asyncio
import ctypes
import io
import json
import mmap
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gateway import logs
from gateway.audit import (
    AuditContext,
    AuditError,
    AuditUnavailable,
    AuditWriter,
    Signer,
    WriterOptions,
    generate_keypair,
    load_public_key,
    records,
)
from gateway.audit.chain import Sealed
from gateway.audit.filesink import FileSink
from gateway.audit.verify import verify_dir

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("key")
    generate_keypair(d / "audit.pem", d / "audit.pub")
    return d / "audit.pem"


def ctx() -> AuditContext:
    return AuditContext.build(session="s1", subject="ci-bot", issuer="https://ci",
                              groups=["ci"], client_addr="10.0.0.5")


def stmt(i: int = 0) -> dict:
    return records.statement_record(ctx(), decision_seq=i, outcome="allowed", command="SELECT",
                                    rows=i)


def writer(d: Path, key: Path, **opts: object) -> AuditWriter:
    w = AuditWriter(FileSink(d, "gw1", fsync=opts.get("durability") == "fsync"),
                    instance="gw1", signer=Signer.from_pem_file(key),
                    options=WriterOptions(**opts))  # type: ignore[arg-type]
    w.start()
    return w


def assert_verifies(d: Path, key: Path) -> None:
    report = verify_dir(d, load_public_key(key.with_suffix(".pub")))
    assert report.ok, report.problem


def wait_until(cond, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_statements_wait_for_their_record_and_fsyncs_are_shared(tmp_path: Path,
                                                                  key: Path) -> None:
    """Fifty sessions each append a record and wait for it (durability: fsync): they
    all get through, and far fewer fsyncs than records were needed (group commit)."""
    w = writer(tmp_path, key, durability="fsync", checkpoint_every=0, checkpoint_seconds=0)
    syncs = 0
    real_sync = w.sink.sync

    def counting_sync() -> None:
        nonlocal syncs
        syncs += 1
        real_sync()

    w.sink.sync = counting_sync  # type: ignore[method-assign]

    async def session(n: int) -> list[int]:
        done = []
        for i in range(20):
            seq = w.append(stmt(n * 100 + i))
            if not w.is_durable(seq):
                await w.wait_durable(seq)
            assert w.is_durable(seq)
            done.append(seq)
        return done

    async def main() -> list[list[int]]:
        return await asyncio.gather(*(session(n) for n in range(50)))

    results = asyncio.run(main())
    seqs = sorted(s for r in results for s in r)
    assert len(seqs) == 1000 and len(set(seqs)) == 1000
    assert syncs < 500, syncs
    assert w.close()
    assert_verifies(tmp_path, key)


def test_append_durable_and_flush(tmp_path: Path, key: Path) -> None:
    w = writer(tmp_path, key)

    async def main() -> int:
        return await w.append_durable(stmt())

    seq = asyncio.run(main())
    assert w.durable_seq >= seq
    for i in range(100):
        w.append(stmt(i))
    w.flush(timeout=5)
    assert w.status()["backlog"] == 0 and w.status()["healthy"]
    assert w.close()
    assert_verifies(tmp_path, key)


_DISK_FULL = textwrap.dedent("""
    import asyncio, json, os, resource, signal, sys, time
    from pathlib import Path
    from gateway.audit import AuditContext, AuditUnavailable, AuditWriter, Signer, WriterOptions
    from gateway.audit import records
    from gateway.audit.filesink import FileSink

    d, key = Path(sys.argv[1]), sys.argv[2]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    events = []
    w = AuditWriter(FileSink(d, "gw1"), instance="gw1", signer=Signer.from_pem_file(key),
                    options=WriterOptions(retry_seconds=0.05, checkpoint_every=0,
                                          checkpoint_seconds=0),
                    on_health=lambda ok, err: events.append([ok, err]))
    w.start()
    w.flush()
    ctx = AuditContext.build(session="s1", subject="ci-bot", issuer="https://ci")
    rec = records.statement_record(ctx, decision_seq=None, outcome="allowed", rows=1)
    size = (d / "audit-gw1-000001.jsonl").stat().st_size
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 5000, hard))  # the "disk" is nearly full
    appended = 0
    while w.healthy:
        w.append(rec)
        appended += 1
        try:
            w.flush(timeout=5)
        except AuditUnavailable:
            pass
    out = {"appended_before_failure": appended, "error": w.error}
    try:
        w.check()
    except AuditUnavailable as exc:
        out["check"] = [exc.sqlstate, str(exc)]

    async def waits():
        seq = w.append(rec)
        try:
            await w.wait_durable(seq)
            return "durable"
        except AuditUnavailable as exc:
            return exc.sqlstate
    out["wait"] = asyncio.run(waits())
    appended += 1
    time.sleep(0.2)  # retries keep failing meanwhile
    out["still_failing"] = not w.healthy
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # space is freed
    deadline = time.monotonic() + 5
    while not w.healthy and time.monotonic() < deadline:
        time.sleep(0.01)
    out["recovered"] = w.healthy
    w.append(rec)
    appended += 1
    w.flush(timeout=5)
    out["closed_clean"] = w.close()
    out["appended"] = appended
    out["events"] = events
    print(json.dumps(out))
""")


def test_a_full_disk_makes_the_writer_unavailable_until_it_recovers(tmp_path: Path,
                                                                    key: Path) -> None:
    """RLIMIT_FSIZE stands in for a full disk: the write fails part-way, the writer turns
    unhealthy (58030 for every check and wait), and once space is back it writes the
    backlog from the first unwritten byte: nothing lost, nothing twice."""
    proc = subprocess.run([sys.executable, "-c", _DISK_FULL, str(tmp_path), str(key)],
                          capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["appended_before_failure"] >= 2
    assert "large" in out["error"].lower()  # EFBIG: "File too large"
    assert out["check"][0] == "58030" and "refused until it recovers" in out["check"][1]
    assert out["wait"] == "58030"
    assert out["still_failing"] and out["recovered"] and out["closed_clean"]
    assert [e[0] for e in out["events"]] == [False, True]
    assert_verifies(tmp_path, key)
    lines = [json.loads(x) for x in (tmp_path / "audit-gw1-000001.jsonl").read_text().splitlines()]
    statements = [r for r in lines if r["type"] == "statement"]
    assert len(statements) == out["appended"]  # every record once, none lost


def test_it_writes_through_only_with_os_durability_and_a_healthy_sink(tmp_path: Path,
                                                                     key: Path) -> None:
    """`writes_through`: whether a record appended now can be written later at once on the
    caller's thread (what lets a read be forwarded before its record is written)."""
    synced = writer(tmp_path / "fsync", key, durability="fsync")
    try:
        assert not synced.writes_through
    finally:
        synced.close()
    w = writer(tmp_path / "os", key, retry_seconds=60)
    try:
        assert w.writes_through
        w.append(stmt(1))
        w.sink.write = lambda batch: (_ for _ in ()).throw(  # type: ignore[method-assign]
            OSError(28, "No space left on device"))
        assert not w.write_through()
        assert not w.writes_through
    finally:
        w.close(timeout=0)


def test_an_unwritable_directory_makes_it_unavailable_until_fixed(tmp_path: Path,
                                                                  key: Path) -> None:
    """The next segment cannot be created (a read-only directory; as root, whom
    permissions do not stop, something in the segment's way): statements would be
    refused until the directory is writable again."""
    w = writer(tmp_path, key, segment_bytes=4096, retry_seconds=0.05, checkpoint_seconds=0)
    blocker = tmp_path / "audit-gw1-000002.jsonl"
    as_root = os.geteuid() == 0
    if as_root:
        blocker.mkdir()
    else:
        tmp_path.chmod(0o500)
    try:
        for i in range(60):  # ~200 bytes each: crosses 4 KiB, so the writer rotates
            w.append(stmt(i))
        wait_until(lambda: not w.healthy)
        with pytest.raises(AuditUnavailable) as exc:
            w.check()
        assert exc.value.sqlstate == "58030"
        with pytest.raises(AuditUnavailable):
            w.flush(timeout=2)
    finally:
        if as_root:
            blocker.rmdir()
        else:
            tmp_path.chmod(0o750)
    wait_until(lambda: w.healthy)
    w.flush(timeout=5)
    assert w.close()
    assert_verifies(tmp_path, key)
    assert len(list(tmp_path.glob("audit-gw1-*.jsonl"))) >= 2


def test_a_full_backlog_refuses_new_records(tmp_path: Path, key: Path) -> None:
    w = writer(tmp_path, key, max_backlog=100, retry_seconds=10, segment_bytes=4096,
               checkpoint_every=0, checkpoint_seconds=0)
    (tmp_path / "audit-gw1-000002.jsonl").mkdir()  # rotation will fail
    for i in range(30):
        w.append(stmt(i))
    wait_until(lambda: not w.healthy)
    with pytest.raises(AuditUnavailable, match="refused until it recovers"):
        for i in range(200):
            w.append(stmt(i))
    assert w.status()["backlog"] == 100
    (tmp_path / "audit-gw1-000002.jsonl").rmdir()
    assert not w.close(timeout=0.2)  # the retry is 10 s away: records are reported lost


def test_admit_refuses_what_append_would_and_bounds_a_batch(tmp_path: Path,
                                                            key: Path) -> None:
    """`admit`: the check of a statement that appends nothing before it runs (a repeat
    answered by a kept allow), whose statement record follows with wake=False. It raises
    where append would (a full backlog, a closed writer), and past batch_records queued
    records it has the thread write them rather than wait for its timer."""
    w = writer(tmp_path, key, batch_records=3, checkpoint_every=0, checkpoint_seconds=0)
    w.admit()
    wait_until(lambda: w.durable_seq == w.head[0] and not w._wake.is_set())  # asleep
    # Held by the test, the I/O lock keeps a woken thread from taking the wake up: what
    # admit() did is left to see.
    with w._io_lock:
        for i in range(2):
            w.append(stmt(i), wake=False)
        w.admit()
        assert not w._wake.is_set()  # two queued: they wait for a write or the timer
        w.append(stmt(2), wake=False)
        w.admit()
        assert w._wake.is_set()  # three: the thread is woken
        w.ledger.max_backlog = 3  # (the header and the three records are not durable)
        with pytest.raises(AuditUnavailable, match="records wait for the sink"):
            w.admit()
        w.ledger.max_backlog = 100_000
    wait_until(lambda: w.durable_seq == w.head[0])
    assert w.close()
    with pytest.raises(AuditUnavailable, match="not open"):
        w.admit()
    assert_verifies(tmp_path, key)


def test_one_process_per_instance(tmp_path: Path, key: Path) -> None:
    w = writer(tmp_path, key)
    other = AuditWriter(FileSink(tmp_path, "gw1"), instance="gw1")
    with pytest.raises(AuditError, match="another process"):
        other.start()
    assert w.close()
    with pytest.raises(AuditUnavailable):
        w.append(stmt())


def test_checkpoints_and_rotation_by_time(tmp_path: Path, key: Path) -> None:
    w = writer(tmp_path, key, checkpoint_every=0, checkpoint_seconds=0.05,
               segment_seconds=0.15)
    w.append(stmt())
    wait_until(lambda: w.status()["segment"] >= 2)
    w.append(stmt())
    assert w.close()
    lines = [json.loads(x) for f in sorted(tmp_path.glob("audit-gw1-*.jsonl"))
             for x in f.read_text().splitlines()]
    reasons = [r["reason"] for r in lines if r["type"] == "checkpoint"]
    assert "interval" in reasons and "rotation" in reasons and reasons[-1] == "shutdown"
    assert lines[-1]["final"] is True
    assert_verifies(tmp_path, key)


def open_paths() -> set[str]:
    """What this process's file descriptors point to."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return out


def resident_pages(path: Path) -> int:
    """Pages of `path` in the OS's page cache: mincore(2) on a mapping of it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = path.stat().st_size
    with open(path, "rb") as f:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, f.fileno(), 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            vec = ctypes.create_string_buffer((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE)
            assert libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
            return sum(b & 1 for b in vec.raw)
        finally:
            libc.munmap(addr, size)


def drops_synced_pages(d: Path) -> bool:
    """Whether `d`'s file system lets a synced file's pages go (not tmpfs, say)."""
    probe = d / "probe"
    probe.write_bytes(b"x" * 65536)
    fd = os.open(probe, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    gone = resident_pages(probe) == 0
    probe.unlink()
    return gone


def test_a_closed_segment_is_synced_dropped_from_the_page_cache_and_closed(
        tmp_path: Path, key: Path) -> None:
    logdir = tmp_path / "log"
    w = writer(logdir, key, segment_bytes=64 * 1024, checkpoint_every=0, checkpoint_seconds=0)
    while w.status()["segment"] < 3:
        w.append(stmt(1), wake=False)
        assert w.write_through()  # rotates on this thread; the writer thread retires
    closed = [str(logdir / f"audit-gw1-{n:06d}.jsonl") for n in (1, 2)]
    current = logdir / "audit-gw1-000003.jsonl"
    wait_until(lambda: not set(closed) & open_paths())
    assert str(current) in open_paths()
    assert resident_pages(current) > 0  # what was just written is cached...
    if drops_synced_pages(tmp_path):  # ... and what was closed is on disk, not in memory
        assert [resident_pages(Path(p)) for p in closed] == [0, 0]
    assert w.close()
    assert not {str(p) for p in logdir.iterdir()} & open_paths()
    assert_verifies(logdir, key)


def test_closing_the_sink_retires_the_segments_it_closed(tmp_path: Path) -> None:
    sink = FileSink(tmp_path, "gw1")
    sink.acquire()
    sink.open_segment(1)
    sink.write([Sealed(1, "0" * 64, b"{}\n", "", "segment", None)])
    sink.open_segment(2)  # no writer thread here to retire segment 1 yet
    first = str(tmp_path / "audit-gw1-000001.jsonl")
    assert first in open_paths()
    sink.close()
    assert not {str(p) for p in tmp_path.iterdir()} & open_paths()


def test_a_segment_that_cannot_be_synced_is_reported_and_closed(tmp_path: Path) -> None:
    sink = FileSink(tmp_path, "gw1")
    r, w = os.pipe()  # fdatasync(2) of a pipe fails (EINVAL): a real error, of a real fd
    os.close(w)
    sink._closed.append((r, "audit-gw1-000007.jsonl"))
    stream, saved = io.StringIO(), (logs._logger.handlers[:], logs._logger.level)
    logs.configure("info", stream)
    try:
        sink.retire()
    finally:
        logs._logger.handlers[:], _ = saved
        logs._logger.setLevel(saved[1])
    line = json.loads(stream.getvalue())
    assert line["event"] == "audit.segment_sync_failed"
    assert line["segment"] == "audit-gw1-000007.jsonl" and line["error"]
    with pytest.raises(OSError):
        os.fstat(r)  # closed all the same
    assert not sink._closed


def test_an_idle_writer_sleeps(tmp_path: Path, key: Path) -> None:
    w = writer(tmp_path, key, checkpoint_seconds=0.05, segment_seconds=0.05)
    w.append(stmt())
    time.sleep(0.2)  # the interval checkpoint and the rotation are due, then done
    cpu = time.process_time()
    time.sleep(0.3)
    assert time.process_time() - cpu < 0.1  # nothing to do: no busy loop
    assert w.close()
    assert_verifies(tmp_path, key)


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="durability"):
        WriterOptions(durability="sometimes")
    with pytest.raises(ValueError, match="batch_records"):
        WriterOptions(batch_records=0)
    with pytest.raises(AuditError, match="instance id"):
        FileSink("/tmp", "bad/name")


def test_settings_open_a_writer_per_worker(tmp_path: Path, key: Path) -> None:
    from dataclasses import dataclass

    from gateway.audit import AuditSettings, open_audit

    @dataclass(frozen=True)
    class Config:  # the shape of gateway.config.model.AuditConfig
        dir: Path
        signing_key: Path | None = None

    settings = AuditSettings.from_config(Config(tmp_path, key))
    assert settings.sink == "file" and settings.durability == "os"
    w = open_audit(AuditSettings(dir=tmp_path, signing_key=key, instance_id="gw",
                                 durability="fsync"), worker=3)
    assert w.instance == "gw-w3" and w.options.durability == "fsync"
    w.start()
    assert w.close()
    assert (tmp_path / "audit-gw-w3-000001.jsonl").exists()
    assert_verifies(tmp_path, key)
    with pytest.raises(AuditError, match="sink"):
        AuditSettings(dir=tmp_path, sink="kafka")
    with pytest.raises(AuditError, match="dsn"):
        AuditSettings(dir=tmp_path, sink="postgres")
    with pytest.raises(AuditError, match="durability"):
        open_audit(AuditSettings(dir=tmp_path, durability="never"))


_PARTIAL_BATCH = textwrap.dedent("""
    import json, os, resource, signal, sys
    from pathlib import Path
    from gateway.audit.chain import Chain
    from gateway.audit.filesink import _IOV_MAX, FileSink

    d, records, cut = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit stops short
    sink = FileSink(d, "gw1")
    sink.acquire()
    sink.open_segment(1)
    chain = Chain("gw1")
    batch = [chain.seal({"type": "statement", "rows": i, "note": "x" * 300})
             for i in range(records)]
    want = b"".join(s.line for s in batch)
    # mid-record: in the only writev, or a later one; or where one writev ended, so that
    # the next fails outright
    limit = len(want) * 3 // 5 + 7 if cut == "mid" else \
        sum(len(s.line) for s in batch[:_IOV_MAX])
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    out = {}
    try:
        sink.write(batch)
    except OSError as exc:
        out["error"] = exc.strerror
    out["written"] = (d / "audit-gw1-000001.jsonl").stat().st_size
    out["limit"], out["size"] = limit, len(want)
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    sink.write(batch)  # the same batch again: from the first unwritten byte on
    sink.close()
    out["whole"] = (d / "audit-gw1-000001.jsonl").read_bytes() == want
    print(json.dumps(out))
""")


@pytest.mark.parametrize(("records", "cut"), [(6, "mid"), (3000, "mid"), (3000, "between")])
def test_a_batch_cut_short_resumes_at_the_first_unwritten_byte(tmp_path: Path, records: int,
                                                               cut: str) -> None:
    """Records in gathered writes (IOV_MAX lines each) that the disk stops part-way, in a
    write or between two: the retry of the same batch writes the rest once, so the file
    holds every line exactly once."""
    proc = subprocess.run([sys.executable, "-c", _PARTIAL_BATCH, str(tmp_path), str(records),
                           cut], capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["written"] == out["limit"] < out["size"]  # as far as the disk let it
    assert out["error"]  # and then said why
    assert out["whole"]


def test_a_full_backlog_refuses_new_work_but_takes_what_is_owed(tmp_path: Path,
                                                                 key: Path) -> None:
    """The backlog stops new statements; the end of one that already ran, or of a
    session, is still recorded (once the sink recovers), not dropped."""
    import time as clock

    from gateway.audit.template import TemplateCache
    from gateway.masking.results import StatementTag
    from gateway.proxy.session import Session

    w = writer(tmp_path, key, max_backlog=5, retry_seconds=0.05, checkpoint_seconds=0)
    sink_write = w.sink.write

    def full_disk(batch: object) -> None:
        raise OSError(28, "No space left on device")

    w.sink.write = full_disk  # type: ignore[method-assign]
    try:
        with pytest.raises(AuditUnavailable):  # (within 5 records: the backlog is full)
            for i in range(6):
                w.append(stmt(i), wake=False)
        # a statement that ran: its completion record, through the session's own path
        session = Session.__new__(Session)
        session.id, session.audit_ctx = "s1", ctx()
        session.totals = records.SessionTotals()
        session._templates = TemplateCache(w)
        session.server = type("Server", (), {"audit": w})()
        before = w.head[0]
        session._statement_done(StatementTag(decision_seq=3, started=clock.perf_counter(),
                                             command="SELECT"), 0x43, b"SELECT 1\0", {})
        assert w.head[0] == before + 1
    finally:
        w.sink.write = sink_write  # type: ignore[method-assign]
    wait_until(lambda: w.healthy)
    assert w.close()
    lines = [json.loads(line) for f in sorted(tmp_path.glob("*.jsonl"))
             for line in f.read_text().splitlines()]
    assert [r["decision_seq"] for r in lines if r["type"] == "statement"][-1] == 3
    assert_verifies(tmp_path, key)


def test_each_new_segment_restates_the_sessions_open_then(tmp_path: Path, key: Path) -> None:
    """After its header, a segment restates every session open when it started, as its
    latest session.start or session.update left it; an ended session is not restated."""
    def context(session: str, app: str) -> AuditContext:
        facts = {"identity": {"subject": "ci-bot", "issuer": "https://ci", "groups": ["ci"]},
                 "connection": {"application_name": app, "client_addr": "10.0.0.5"},
                 "session": {"id": session}}
        return AuditContext.from_input(facts)

    w = writer(tmp_path, key, segment_bytes=4096, checkpoint_every=0, checkpoint_seconds=0)
    kept, renamed, gone = context("s1", "job"), context("s2", "psql"), context("s3", "x")
    for c in (kept, renamed, gone):
        w.append(records.session_start(c))
    newer = context("s2", "pgJDBC")
    w.append(records.session_update(newer, changed=("application_name",)))
    w.append(records.session_end(gone, reason="client", totals={}))
    for i in range(30):  # ~250 bytes each: past 4 KiB, a rotation
        w.append(stmt(i))
    assert w.close()
    assert_verifies(tmp_path, key)
    segments = sorted(tmp_path.glob("audit-gw1-*.jsonl"))
    assert len(segments) >= 2
    for segment in segments[1:]:
        lines = [json.loads(x) for x in segment.read_text().splitlines()]
        restated = {r["session"]: r for r in lines[1:3]}
        assert lines[0]["type"] == "segment" and set(restated) == {"s1", "s2"}
        assert all(r["type"] == "session.update" and r["restated"] == "segment"
                   and r["changed"] == [] for r in restated.values())
        assert restated["s1"]["input"] == records.session_start(kept)["input"]
        assert restated["s2"]["where"]["application_name"] == "pgJDBC"
        assert restated["s2"]["input"]["connection"]["application_name"] == "pgJDBC"
        assert "s3" not in {r.get("session") for r in lines}
