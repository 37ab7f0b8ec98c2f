"""`audit verify`: an intact log passes; every kind of tampering names the first bad record."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.audit import (
    AuditContext,
    AuditWriter,
    Signer,
    WriterOptions,
    generate_keypair,
    load_public_key,
    records,
)
from gateway.audit.canonical import chain_hash, hashed_body
from gateway.audit.filesink import FileSink
from gateway.audit.verify import Problem, VerifyReport, verify_dir


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("keys")
    generate_keypair(d / "audit.pem", d / "audit.pub")
    generate_keypair(d / "other.pem", d / "other.pub")
    return d / "audit.pem", d / "audit.pub"


def ctx(session: str = "s1") -> AuditContext:
    return AuditContext.build(session=session, subject="ci-bot", issuer="https://ci",
                              groups=["ci"], client_addr="10.0.0.5", application_name="psql",
                              connection="cardholder")


def write_log(directory: Path, key: Path, *, statements: int = 60, run: int = 0,
              options: WriterOptions | None = None, close: bool = True) -> AuditWriter:
    opts = options or WriterOptions(checkpoint_every=25, segment_bytes=16 * 1024)
    w = AuditWriter(FileSink(directory, "gw1"), instance="gw1",
                    signer=Signer.from_pem_file(key), options=opts)
    w.start()
    w.append(records.gateway_start(version="test", pid=run))
    c = ctx(f"s{run}")
    w.append(records.session_start(c))
    for i in range(statements):
        w.append(records.statement_record(c, decision_seq=None, outcome="allowed",
                                          command="SELECT", rows=i, duration_us=100 + i))
    w.append(records.session_end(c, reason="client", totals={"statements": statements}))
    if close:
        w.append(records.gateway_stop(reason="test"))
        assert w.close()
    else:
        w.flush()
    return w


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, Path]) -> Path:
    d = tmp_path_factory.mktemp("pristine") / "audit"
    write_log(d, keys[0])
    return d


@pytest.fixture
def log(pristine: Path, tmp_path: Path) -> Path:
    d = tmp_path / "audit"
    shutil.copytree(pristine, d)
    return d


def segments(d: Path) -> list[Path]:
    return sorted(d.glob("audit-gw1-*.jsonl"))


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def verify(d: Path, pub: Path, **kw: object) -> VerifyReport:
    return verify_dir(d, load_public_key(pub), **kw)  # type: ignore[arg-type]


def first_statement(d: Path) -> tuple[Path, int, dict]:
    """A statement record in the middle of the second segment: (file, index, record)."""
    path = segments(d)[1]
    lines = lines_of(path)
    for i, line in enumerate(lines):
        rec = json.loads(line)
        if rec["type"] == "statement" and i > 2:
            return path, i, rec
    raise AssertionError("no statement record")


def rehash(line_rec: dict, prev: str) -> bytes:
    body = {k: v for k, v in line_rec.items() if k != "hash"}
    body["prev"] = prev
    from gateway.audit.canonical import canonical_bytes

    raw = canonical_bytes(body)
    return raw[:-1] + b',"hash":"' + chain_hash(prev, raw).encode() + b'"}\n'


# -- the intact log ----------------------------------------------------------------------------


def test_an_intact_log_verifies(pristine: Path, keys: tuple[Path, Path]) -> None:
    report = verify(pristine, keys[1])
    assert report.ok, report.problem
    (s,) = report.instances
    assert s.sealed and s.unsealed == 0 and s.segments >= 3 and s.checkpoints >= 3
    assert s.first_seq == 1 and s.last_seq == s.records


# -- tampering, one test each ----------------------------------------------------------------


def test_an_edited_field_is_named(log: Path, keys: tuple[Path, Path]) -> None:
    path, i, rec = first_statement(log)
    lines = lines_of(path)
    lines[i] = lines[i].replace(b'"rows":', b'"rows":1', 1)
    path.write_bytes(b"".join(lines))
    p = verify(log, keys[1]).problem
    assert p is not None and (p.location, p.line, p.seq) == (path.name, i + 1, rec["seq"])
    assert "edited" in p.message


def test_a_deleted_record_is_named(log: Path, keys: tuple[Path, Path]) -> None:
    path, i, rec = first_statement(log)
    lines = lines_of(path)
    del lines[i]
    path.write_bytes(b"".join(lines))
    p = verify(log, keys[1]).problem
    assert p is not None and (p.location, p.line, p.seq) == (path.name, i + 1, rec["seq"] + 1)
    assert f"record(s) {rec['seq']} deleted" in p.message


def test_two_swapped_records_are_named(log: Path, keys: tuple[Path, Path]) -> None:
    path, i, rec = first_statement(log)
    lines = lines_of(path)
    lines[i], lines[i + 1] = lines[i + 1], lines[i]
    path.write_bytes(b"".join(lines))
    p = verify(log, keys[1]).problem
    assert p is not None and (p.location, p.line, p.seq) == (path.name, i + 1, rec["seq"] + 1)
    assert f"where {rec['seq']} was expected" in p.message


def test_an_inserted_forged_record_is_named(log: Path, keys: tuple[Path, Path]) -> None:
    path, i, rec = first_statement(log)
    lines = lines_of(path)
    forged = dict(rec, rows=0, outcome="denied")  # copied hash: does not match its content
    lines.insert(i, json.dumps(forged, separators=(",", ":")).encode() + b"\n")
    path.write_bytes(b"".join(lines))
    p = verify(log, keys[1]).problem
    assert p is not None and (p.location, p.line, p.seq) == (path.name, i + 1, rec["seq"])


def test_a_forged_record_with_a_correct_hash_is_caught_by_the_sequence(
        log: Path, keys: tuple[Path, Path]) -> None:
    path, i, rec = first_statement(log)
    lines = lines_of(path)
    forged = dict(rec, rows=0)
    lines.insert(i, rehash(forged, rec["prev"]))  # links to the record before, hashes right
    path.write_bytes(b"".join(lines))
    p = verify(log, keys[1]).problem
    assert p is not None and (p.location, p.line, p.seq) == (path.name, i + 2, rec["seq"])
    assert "goes back" in p.message


def test_a_rewritten_chain_fails_at_the_next_signed_checkpoint(
        log: Path, keys: tuple[Path, Path]) -> None:
    """Edit one record and recompute every hash after it: only the signature can tell."""
    path, i, _rec = first_statement(log)
    files = segments(log)
    start = files.index(path)
    prev = None
    bad_checkpoint = None
    for f in files[start:]:
        out = []
        for j, line in enumerate(lines_of(f)):
            rec = json.loads(line)
            if f == path and j < i:
                out.append(line)
                prev = rec["hash"]
                continue
            if f == path and j == i:
                rec["rows"] = 999
            if rec["type"] == "checkpoint":
                rec["head_hash"] = prev
                bad_checkpoint = bad_checkpoint or (f.name, j + 1, rec["seq"])
            if rec["type"] == "segment":
                rec["previous_hash"] = prev
            new = rehash(rec, prev)
            prev = json.loads(new)["hash"]
            out.append(new)
        f.write_bytes(b"".join(out))
    p = verify(log, keys[1]).problem
    assert p is not None and (p.location, p.line, p.seq) == bad_checkpoint
    assert "signature does not verify" in p.message


def test_a_truncated_tail_after_the_shutdown_checkpoint_is_named(
        log: Path, keys: tuple[Path, Path]) -> None:
    last = segments(log)[-1]
    lines = lines_of(last)
    assert json.loads(lines[-1])["final"] is True
    kept = lines[:-3]  # gateway.stop, session.end and the final checkpoint are gone
    last.write_bytes(b"".join(kept))
    last_seq = json.loads(kept[-1])["seq"]
    p = verify(log, keys[1]).problem
    assert p is not None and (p.location, p.line, p.seq) == (last.name, len(kept) + 1,
                                                             last_seq + 1)
    assert "without the final checkpoint" in p.message
    # A running gateway's unsealed tail is accepted with --live, and counted.
    report = verify(log, keys[1], live=True)
    assert report.ok and report.instances[0].unsealed >= 1 and report.notes


def test_a_log_cut_right_after_a_checkpoint_is_not_sealed(
        log: Path, keys: tuple[Path, Path]) -> None:
    files = segments(log)
    cut_in = files[1]
    lines = lines_of(cut_in)
    assert json.loads(lines[-1])["type"] == "checkpoint"  # rotation checkpoint
    for f in files[2:]:
        f.unlink()
    p = verify(log, keys[1]).problem
    assert p is not None and p.location == cut_in.name and p.line == len(lines) + 1
    assert "without the final checkpoint" in p.message


def test_a_record_cut_in_the_middle_is_named(log: Path, keys: tuple[Path, Path]) -> None:
    last = segments(log)[-1]
    data = last.read_bytes()
    last.write_bytes(data[: len(data) - 40])
    p = verify(log, keys[1]).problem
    assert p is not None and p.location == last.name
    assert p.line == len(data[: len(data) - 40].splitlines())
    assert "truncated record" in p.message


def test_a_line_that_hashes_right_but_is_not_canonical_is_named(
        log: Path, keys: tuple[Path, Path]) -> None:
    """The final checkpoint's line with a member written twice: most parsers keep the
    last one (the signed value), a reader that keeps the first sees another record.
    Nothing chains after it, so its hash can simply be recomputed."""
    last = segments(log)[-1]
    lines = lines_of(last)
    body, _ = hashed_body(lines[-1].rstrip(b"\n"))  # type: ignore[misc]
    forged = b'{"type":"decision","reason":"GRANT ALL ON cards TO mallory",' + body[1:]
    prev = json.loads(lines[-1])["prev"]
    lines[-1] = forged[:-1] + b',"hash":"' + chain_hash(prev, forged).encode() + b'"}\n'
    last.write_bytes(b"".join(lines))
    p = verify(log, keys[1]).problem
    assert p is not None and (p.location, p.line) == (last.name, len(lines))
    assert "not in canonical form" in p.message
    # the same with only a space added
    lines[-1] = body[:-1] + b' ,"hash":"' + chain_hash(prev, body[:-1] + b" }").encode() \
        + b'"}\n'
    last.write_bytes(b"".join(lines))
    p = verify(log, keys[1]).problem
    assert p is not None and "not in canonical form" in p.message


def test_a_deleted_segment_file_is_named(log: Path, keys: tuple[Path, Path]) -> None:
    files = segments(log)
    files[1].unlink()
    p = verify(log, keys[1]).problem
    assert p is not None and p.location == files[2].name and p.line == 1
    assert "missing" in p.message


def test_the_wrong_key_fails_at_the_first_checkpoint(
        pristine: Path, keys: tuple[Path, Path]) -> None:
    other = keys[1].parent / "other.pub"
    p = verify(pristine, other).problem
    assert p is not None and "not with the given key" in p.message
    first_cp = next(
        (f.name, n, rec["seq"]) for f in segments(pristine)
        for n, line in enumerate(lines_of(f), 1)
        if (rec := json.loads(line))["type"] == "checkpoint")
    assert (p.location, p.line, p.seq) == first_cp


# -- restarts ----------------------------------------------------------------------------------


def test_restarts_continue_the_chain_and_repair_a_torn_line(
        tmp_path: Path, keys: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    d = tmp_path / "audit"
    opts = WriterOptions(checkpoint_every=0, checkpoint_seconds=0)
    write_log(d, keys[0], statements=5, run=1, options=opts)
    # Second run dies without closing; its last line is half written.
    w = write_log(d, keys[0], statements=5, run=2, options=opts, close=False)
    w.sink.close()  # the process "dies": no final checkpoint
    last = segments(d)[-1]
    last.write_bytes(last.read_bytes() + b'{"half":')
    w3 = write_log(d, keys[0], statements=5, run=3, options=opts)
    assert w3.resumed is not None and w3.resumed.torn_bytes == len(b'{"half":')
    assert not w3.resumed.sealed
    assert [r.getMessage() for r in caplog.records].count("audit.resumed_unsealed") == 1
    # Run 2's records are signed by no checkpoint of its own: verify names its end until
    # told it was a crash (and no more of them than a crash could leave).
    p = verify(d, keys[1]).problem
    assert p is not None and (p.location, p.line) == (segments(d)[2].name, 1)
    assert "without its final checkpoint" in p.message and "--accept-crashes" in p.message
    unsigned = len(lines_of(segments(d)[1]))
    pub = load_public_key(keys[1])
    report = verify_dir(d, pub, accept_crashes=True)
    assert report.ok, report.problem
    assert (report.instances[0].crashed_runs, report.instances[0].unsigned) == (1, unsigned)
    assert any("without its final checkpoint" in note for note in report.notes)
    p = verify_dir(d, pub, accept_crashes=True, max_unsigned=unsigned - 1).problem
    assert p is not None and "checkpoints were removed" in p.message
    headers = [json.loads(lines_of(f)[0]) for f in segments(d)]
    assert [h["segment"] for h in headers] == [1, 2, 3]
    assert headers[1]["previous_segment"] == segments(d)[0].name
    assert headers[2]["torn_bytes"] == len(b'{"half":')
    # The restart took the last record's hash: the chain links across runs.
    tail = json.loads(lines_of(segments(d)[1])[-1])
    assert headers[2]["previous_hash"] == tail["hash"] == headers[2]["prev"]


def rechain(d: Path, keep) -> None:  # type: ignore[no-untyped-def]
    """What anyone can do without the key: the log again without the records `keep`
    rejects and without its checkpoints (which cannot be re-signed), every seq, prev,
    hash and segment header recomputed."""
    from gateway.audit.canonical import GENESIS, canonical_bytes

    seq, head = 0, GENESIS
    for path in segments(d):
        out = []
        for line in lines_of(path):
            rec = json.loads(line)
            if rec["type"] == "checkpoint" or not keep(rec):
                continue
            body = {k: v for k, v in rec.items() if k != "hash"}
            seq += 1
            body["seq"], body["prev"] = seq, head
            if body["type"] == "segment":
                body["previous_seq"], body["previous_hash"] = seq - 1, head
            raw = canonical_bytes(body)
            head = chain_hash(head, raw)
            out.append(raw[:-1] + b',"hash":"' + head.encode() + b'"}\n')
        path.write_bytes(b"".join(out))


def test_a_history_rechained_without_its_checkpoints_is_not_vouched_for_by_a_restart(
        tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """The next run's checkpoints sign the chain up to them, so the run before it is
    held to its own: a restart on top of a rewritten log does not launder it."""
    d = tmp_path / "audit"
    opts = WriterOptions(checkpoint_every=10, segment_bytes=8 * 1024)
    write_log(d, keys[0], statements=30, run=1, options=opts)
    rechain(d, lambda rec: rec.get("rows") not in (7, 8, 9))
    assert not verify(d, keys[1]).ok  # (no final checkpoint: seen already)
    write_log(d, keys[0], statements=3, run=2, options=opts)  # a routine restart
    p = verify(d, keys[1]).problem
    assert p is not None and "ended at seq" in p.message
    assert "is signed by a checkpoint" in p.message  # (none of its records is)
    # told crashes happen, still more unsigned records than checkpoint_every allows
    p = verify(d, keys[1], accept_crashes=True, max_unsigned=10).problem
    assert p is not None and "checkpoints were removed" in p.message


def test_a_run_cut_after_a_checkpoint_is_named_after_a_restart(
        tmp_path: Path, keys: tuple[Path, Path]) -> None:
    d = tmp_path / "audit"
    write_log(d, keys[0], statements=60, run=1)
    last = segments(d)[-1]
    last.write_bytes(b"".join(lines_of(last)[:3]))  # its final checkpoint and more gone
    write_log(d, keys[0], statements=3, run=2)
    p = verify(d, keys[1]).problem
    assert p is not None and p.location == segments(d)[-1].name and p.line == 1
    assert "without its final checkpoint" in p.message


def added_after_the_final_checkpoint(d: Path, keys: tuple[Path, Path],
                                     forge: Callable[[Path, dict], dict]
                                     ) -> tuple[Problem | None, int]:
    """A run's log with `forge(last file, final checkpoint)` chained on after its final
    checkpoint, then a real restart: verify's problem (crashes accepted), and the forged
    record's seq."""
    write_log(d, keys[0], statements=3, run=1)
    last = segments(d)[-1]
    final = json.loads(lines_of(last)[-1])
    last.write_bytes(last.read_bytes() + rehash(forge(last, final), final["hash"]))
    write_log(d, keys[0], statements=3, run=2)
    return verify(d, keys[1], accept_crashes=True).problem, final["seq"] + 1


def test_a_record_added_after_a_final_checkpoint_is_named_after_a_restart(
        tmp_path: Path, keys: tuple[Path, Path]) -> None:
    p, seq = added_after_the_final_checkpoint(
        tmp_path / "audit", keys, lambda last, final: {
            "type": "approval.granted", "approval_id": "apr_x", "instance": "gw1", "v": 1,
            "seq": final["seq"] + 1, "ts": final["ts"]})
    assert p is not None and p.seq == seq
    assert "follows the final checkpoint" in p.message


def test_a_damaged_last_record_stops_the_start(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    d = tmp_path / "audit"
    write_log(d, keys[0], statements=3)
    last = segments(d)[-1]
    lines = lines_of(last)
    lines[-1] = lines[-1].replace(b'"final":true', b'"final":false')
    last.write_bytes(b"".join(lines))
    from gateway.audit import AuditError

    w = AuditWriter(FileSink(d, "gw1"), instance="gw1", signer=Signer.from_pem_file(keys[0]))
    with pytest.raises(AuditError, match="does not match its hash"):
        w.start()


def test_an_unsigned_log_does_not_verify(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    d = tmp_path / "audit"
    w = AuditWriter(FileSink(d, "gw1"), instance="gw1")
    w.start()
    w.append(records.gateway_start(version="test", pid=1))
    assert w.close()
    p = verify(d, keys[1]).problem
    assert p is not None and "not signed" in p.message


def test_hashed_body_rejects_lines_without_the_hash_member() -> None:
    assert hashed_body(b'{"a":1}') is None
    assert hashed_body(b'{"a":1,"hash":"' + b"g" * 64 + b'"}') is None


@pytest.mark.parametrize("hostile", [
    # nested past the JSON parser's depth: a RecursionError, which escaped as a traceback
    b'{"x":' + b"[" * 200_000 + b"]" * 200_000 + b',"hash":"' + b"0" * 64 + b'"}\n',
    # a prev of 64 characters that are not hex: an encoding error, with no record named
    b'{"prev":"' + "\u00e9".encode() * 64 + b'","seq":3,"type":"x","hash":"'
    + b"0" * 64 + b'"}\n',
], ids=["nested", "non-hex prev"])
def test_a_hostile_line_is_named_not_a_crash(log: Path, keys: tuple[Path, Path],
                                            hostile: bytes) -> None:
    """Found by an adversarial probe: each made `audit verify` end without naming the
    record (a traceback, or exit 2)."""
    path = segments(log)[0]
    lines = lines_of(path)
    lines.insert(2, hostile)
    path.write_bytes(b"".join(lines))
    p = verify(log, keys[1]).problem
    assert p is not None and (p.location, p.line) == (path.name, 3), p


# -- crafted sizes and shapes ------------------------------------------------------------------


def test_a_line_longer_than_any_record_is_named_without_reading_it_whole(
        pristine: Path, tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """A sparse file costs no disk; read as one line it would cost its size in memory."""
    import subprocess
    import sys

    from gateway.audit.canonical import MAX_LINE

    d = tmp_path / "audit"
    shutil.copytree(pristine, d)
    n = len(segments(d)) + 1
    with open(d / f"audit-gw1-{n:06d}.jsonl", "wb") as f:
        f.truncate(MAX_LINE * 4)
    code = ("import resource, sys\nfrom gateway.cli import main\nrc = main(sys.argv[1:])\n"
            "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
            "sys.exit(rc)\n")
    out = subprocess.run([sys.executable, "-c", code, "audit", "verify", str(d), "--key",
                          str(keys[1])], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 1 and "longer than any audit record" in out.stdout, out
    assert int(out.stdout.split("MAXRSS")[1]) < 3 * MAX_LINE // 1024  # KiB, not 4x its size


def test_the_resume_reads_a_long_last_line_once_and_refuses_one_too_long(
        tmp_path: Path) -> None:
    import time

    from gateway.audit import AuditError
    from gateway.audit.canonical import MAX_LINE
    from gateway.audit.filesink import _tail

    path = tmp_path / "seg.jsonl"
    took = []
    for size in (8 << 20, 32 << 20):
        with open(path, "wb") as f:
            f.truncate(size)
        start = time.perf_counter()
        line, torn, _ = _tail(path)
        took.append(time.perf_counter() - start)
        assert line is None and len(torn) == size
    assert took[1] < 8 * took[0] + 0.5, took  # linear, not quadratic
    with open(path, "wb") as f:
        f.truncate(MAX_LINE + (1 << 20))
    with pytest.raises(AuditError, match="longer than any audit record"):
        _tail(path)


def test_a_segment_record_inside_a_segment_is_named(
        tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """The writer opens a new file for every segment record: one appended to a file (here
    a made-up run after the final checkpoint, then a real restart) was added."""
    def header(last: Path, final: dict) -> dict:
        rec = {k: v for k, v in json.loads(lines_of(last)[0]).items() if k != "hash"}
        return {**rec, "seq": final["seq"] + 1, "previous_seq": final["seq"],
                "previous_hash": final["hash"], "previous_segment": last.name}

    p, seq = added_after_the_final_checkpoint(tmp_path / "audit", keys, header)
    assert p is not None and p.seq == seq
    assert "in the middle of a segment" in p.message


def test_a_live_tail_is_held_to_max_unsigned(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """A running gateway signs every checkpoint_every records: a longer unsigned tail
    (a run emptied of its checkpoints, a made-up instance) fails even with --live."""
    d = tmp_path / "audit"
    opts = WriterOptions(checkpoint_every=10, checkpoint_seconds=0)
    write_log(d, keys[0], statements=3, run=1, options=opts)
    w = write_log(d, keys[0], statements=30, run=2, options=opts, close=False)
    try:
        assert verify(d, keys[1], live=True, max_unsigned=10).ok
        rechain(d, lambda rec: rec.get("rows") != 7)  # no checkpoint left to re-sign
        p = verify(d, keys[1], live=True, accept_crashes=True, max_unsigned=10).problem
        assert p is not None and "checkpoints were removed" in p.message
    finally:
        w.sink.close()


def test_crashes_in_a_row_are_each_held_to_the_bound_not_their_sum(
        tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """A run resumed after a crash signs at once, so the next crash's unsigned records
    are its own, and a live log after a crash is held to its own tail too."""
    d = tmp_path / "audit"
    opts = WriterOptions(checkpoint_every=20, checkpoint_seconds=0)
    write_log(d, keys[0], statements=3, run=1, options=opts)
    for run in (2, 3):  # ~10 records each, then killed: fewer than checkpoint_every
        w = write_log(d, keys[0], statements=6, run=run, options=opts, close=False)
        w.sink.close()
    w = write_log(d, keys[0], statements=6, run=4, options=opts, close=False)
    try:
        live = verify(d, keys[1], live=True, accept_crashes=True, max_unsigned=20)
        assert live.ok, live.problem
    finally:
        w.sink.close()
    write_log(d, keys[0], statements=3, run=5, options=opts)
    report = verify(d, keys[1], accept_crashes=True, max_unsigned=20)
    assert report.ok, report.problem
    assert report.instances[0].crashed_runs == 3
    checkpoints = [json.loads(line) for f in segments(d) for line in lines_of(f)
                   if b'"type":"checkpoint"' in line]
    assert [c["reason"] for c in checkpoints].count("resume") == 3  # runs 3, 4 and 5


def test_a_live_log_rotating_while_it_is_listed_is_not_a_deleted_file(
        tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """A directory listing that runs during rotations can miss a file and see a later
    one: for a running gateway, verify looks for the files between before it calls
    one missing."""
    from gateway.audit.verify import ChainVerifier, _verify_files

    d = tmp_path / "audit"
    opts = WriterOptions(checkpoint_every=5, segment_bytes=4096, checkpoint_seconds=0)
    w = write_log(d, keys[0], statements=80, options=opts, close=False)
    try:
        found = [(int(p.name.split("-")[-1][:6]), p) for p in segments(d)]
        assert len(found) >= 4
        listed = found[:1] + found[2:]  # what a listing racing a rotation saw
        v = ChainVerifier("gw1", load_public_key(keys[1]), max_unsigned=100)
        assert _verify_files(v, listed, live=True) is None
        v = ChainVerifier("gw1", load_public_key(keys[1]))
        p = _verify_files(v, listed, live=False)  # (a sealed log's files are all there)
        assert p is not None and "missing" in p.message
    finally:
        w.sink.close()
