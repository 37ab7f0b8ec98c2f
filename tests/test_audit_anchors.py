"""Anchors: the checkpoints a gateway logs once they are written (``audit.checkpoint``),
kept off its host, hold ``audit verify`` to what a chain alone cannot show: that its
newest records are all still there, and that nobody holding the key rewrote them."""

from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import PgBackend, pgwarden, upstreams_for

from gateway import logs
from gateway.audit import (
    AuditContext,
    AuditWriter,
    Signer,
    WriterOptions,
    generate_keypair,
    load_public_key,
    records,
)
from gateway.audit.filesink import FileSink
from gateway.audit.redact import scrub
from gateway.audit.verify import load_anchors, verify_dir
from gateway.audit.writer import anchor_hash
from gateway.devtools.harness import GatewayProcess

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """The gateway's log lines, as a process would write them to stderr."""
    logger = logging.getLogger("pgwarden")
    saved = logger.handlers[:], logger.level, logger.propagate
    stream = io.StringIO()
    logs.configure("info", stream)
    try:
        yield stream
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved  # type: ignore[misc]


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("anchor-key")
    generate_keypair(d / "audit.pem", d / "audit.pub")
    return d / "audit.pem"


def ctx() -> AuditContext:
    return AuditContext.build(session="s1", subject="ci-bot", issuer="https://ci",
                              groups=["ci"], client_addr="10.0.0.5")


def run(d: Path, key: Path, n: int, *, instance: str = "gw1", rows: int = 0,
        **opts: object) -> None:
    """One gateway run's worth of records: `n` statements, then the final checkpoint."""
    w = AuditWriter(FileSink(d, instance), instance=instance,
                    signer=Signer.from_pem_file(key),
                    options=WriterOptions(**opts))  # type: ignore[arg-type]
    w.start()
    for i in range(n):
        w.append(records.statement_record(ctx(), decision_seq=i, outcome="allowed",
                                          command="SELECT", rows=rows + i))
    assert w.close()


def anchors_of(stream: io.StringIO) -> list[dict]:
    return [doc for doc in map(json.loads, stream.getvalue().splitlines())
            if doc["event"] == "audit.checkpoint"]


def save(stream: io.StringIO, path: Path) -> Path:
    path.write_text(stream.getvalue())
    return path




def verify(d: Path, key: Path, *anchor_files: Path) -> subprocess.CompletedProcess[str]:
    extra = [a for f in anchor_files for a in ("--anchors", str(f))]
    return pgwarden("audit", "verify", str(d), "--key", str(key.with_suffix(".pub")), *extra)


def test_each_checkpoint_is_logged_once_written_naming_its_record(
        tmp_path: Path, key: Path, log_lines: io.StringIO) -> None:
    d = tmp_path / "audit"
    run(d, key, 23, checkpoint_every=5, checkpoint_seconds=0)
    stored = {}
    for f in sorted(d.glob("*.jsonl")):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            stored[rec["seq"]] = rec
    checkpoints = [r for r in stored.values() if r["type"] == "checkpoint"]
    anchors = anchors_of(log_lines)
    assert len(checkpoints) >= 5 and len(anchors) == len(checkpoints)
    for a in anchors:
        rec = stored[a["seq"]]
        assert rec["type"] == "checkpoint" and a["instance"] == "gw1"
        assert a["hash"].replace(".", "") == rec["hash"]
        assert a["final"] is rec["final"] and a["reason"] == rec["reason"]
    assert anchors[-1]["final"] is True and anchors[-1]["seq"] == max(stored)


def test_a_checkpoint_the_sink_has_not_taken_is_not_logged_until_it_has(
        tmp_path: Path, key: Path, log_lines: io.StringIO) -> None:
    """An anchor naming a record a crash kept from the log would fail every later
    verification: anchors follow durability, not sealing."""
    w = AuditWriter(FileSink(tmp_path, "gw1"), instance="gw1",
                    signer=Signer.from_pem_file(key),
                    options=WriterOptions(segment_bytes=4096, retry_seconds=0.05,
                                          checkpoint_seconds=0, checkpoint_every=7))
    w.start()
    blocker = tmp_path / "audit-gw1-000002.jsonl"
    blocker.mkdir()  # the next segment cannot be created, whoever runs the test
    try:
        for i in range(60):  # crosses 4 KiB: the rotation fails, records wait
            w.append(records.statement_record(ctx(), decision_seq=i, outcome="allowed",
                                              command="SELECT", rows=i))
        deadline = time.monotonic() + 5
        while w.healthy:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        durable = w.durable_seq
        sealed = w.head[0]
        logged = [a["seq"] for a in anchors_of(log_lines)]
        assert logged and all(seq <= durable for seq in logged)
        assert durable < sealed  # checkpoints by count were sealed past it: not logged
    finally:
        blocker.rmdir()
    assert w.close()
    logged = [a["seq"] for a in anchors_of(log_lines)]
    assert len(logged) == len(set(logged)) and max(logged) == w.head[0]
    anchors = load_anchors([save(log_lines, tmp_path / "gw.log")])
    assert [a.seq for a in anchors if a.kind == "start"] == [1]  # the run's start
    report = verify_dir(tmp_path, load_public_key(key.with_suffix(".pub")), anchors=anchors)
    assert report.ok, report.problem
    assert report.instances[0].anchors_matched == len(logged) + 1


def test_a_newest_run_deleted_whole_verifies_alone_and_fails_against_its_anchors(
        tmp_path: Path, key: Path, log_lines: io.StringIO) -> None:
    d = tmp_path / "audit"
    run(d, key, 10)
    first = set(d.glob("*.jsonl"))
    run(d, key, 10, rows=100)
    anchors = save(log_lines, tmp_path / "gateway.log")
    ok = verify(d, key, anchors)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "4 anchor(s) held" in ok.stdout  # each run's start and final checkpoint
    for f in set(d.glob("*.jsonl")) - first:  # the second run's segment
        f.unlink()
    alone = verify(d, key)
    assert alone.returncode == 0, alone.stdout  # what the chain cannot show by itself
    held = verify(d, key, anchors)
    assert held.returncode == 1
    assert "ends at seq 12, but seq 24 is anchored" in held.stdout
    assert f"{anchors} line" in held.stdout


def test_an_instance_whose_files_are_all_gone_fails_against_its_anchors(
        tmp_path: Path, key: Path, log_lines: io.StringIO) -> None:
    d = tmp_path / "audit"
    run(d, key, 3, instance="gw1")
    run(d, key, 3, instance="gw2")
    anchors = save(log_lines, tmp_path / "gateway.log")
    for f in d.glob("audit-gw2-*.jsonl"):
        f.unlink()
    assert verify(d, key).returncode == 0
    held = verify(d, key, anchors)
    assert held.returncode == 1
    assert "instance gw2" in held.stdout and "no records, but seq 5 is anchored" in held.stdout


def test_a_history_rewritten_with_the_stolen_key_fails_against_the_anchors(
        tmp_path: Path, key: Path, log_lines: io.StringIO) -> None:
    """The signing key proves who wrote a chain, not that it is the chain that was
    written: anchors taken as it was written tell them apart."""
    real = tmp_path / "real"
    run(real, key, 10)
    anchors = save(log_lines, tmp_path / "gateway.log")
    forged = tmp_path / "forged"
    run(forged, key, 10, rows=1)  # the same instance, length and key; other rows
    assert verify(forged, key).returncode == 0
    held = verify(forged, key, anchors)
    assert held.returncode == 1
    assert "differs from the one anchored at seq 1 " in held.stdout  # (its start)
    assert verify(real, key, anchors).returncode == 0


def test_a_run_made_up_between_two_real_ones_fails_against_the_anchors(
        tmp_path: Path, key: Path, log_lines: io.StringIO) -> None:
    """Records anyone can chain (no key), as a run that ended in a crash, between two
    real runs: the next real run's checkpoints sign them, --accept-crashes takes the
    crash, but the gateway's log never announced that run's start."""
    d = tmp_path / "audit"
    run(d, key, 5)
    real = log_lines.getvalue()
    logs.configure("info", io.StringIO())  # what the made-up run would log: nobody sees
    fake = AuditWriter(FileSink(d, "gw1"), instance="gw1")  # no key
    fake.start()
    fake.append(records.statement_record(ctx(), decision_seq=1, outcome="allowed",
                                         command="DELETE", rows=1000))
    fake.flush()
    fake.sink.close()  # "crashed"
    logs.configure("info", log_lines)
    run(d, key, 5, rows=10)
    anchors = tmp_path / "gateway.log"
    anchors.write_text(real + log_lines.getvalue()[len(real):])
    assert verify(d, key).returncode == 1  # a crash, by default
    crash = pgwarden("audit", "verify", str(d), "--key", str(key.with_suffix(".pub")),
                     "--accept-crashes", "--max-unsigned", "10")
    assert crash.returncode == 0, crash.stdout  # what anchors are for
    held = pgwarden("audit", "verify", str(d), "--key", str(key.with_suffix(".pub")),
                    "--accept-crashes", "--max-unsigned", "10", "--anchors", str(anchors))
    assert held.returncode == 1 and "never announced" in held.stdout, held.stdout


def test_anchor_files_that_hold_no_anchor_or_a_bad_one_are_refused(
        tmp_path: Path, key: Path) -> None:
    d = tmp_path / "audit"
    run(d, key, 2)
    empty = tmp_path / "other.log"
    empty.write_text('{"event":"session.start","session":"s1"}\nnot json\n')
    out = verify(d, key, empty)
    assert out.returncode == 2 and "no anchor lines" in out.stderr
    bad = tmp_path / "bad.log"
    bad.write_text(json.dumps({"event": "audit.checkpoint", "instance": "gw1", "seq": "4",
                               "hash": "ab" * 32}) + "\n")
    out = verify(d, key, bad)
    assert out.returncode == 2 and f"{bad} line 1" in out.stderr


def test_an_anchor_hash_survives_the_pan_scanner_every_log_line_passes() -> None:
    digest = "4111111111111111" + "ab" * 24  # a Luhn-valid run of 16 digits in the hex
    line = json.dumps({"event": "audit.checkpoint", "hash": anchor_hash(digest)})
    assert scrub(line) == line
    assert scrub(json.dumps({"hash": digest})) != json.dumps({"hash": digest})
    assert anchor_hash(digest).replace(".", "") == digest


def test_a_gateways_own_log_anchors_its_runs(pg: PgBackend, tmp_path: Path) -> None:
    """Two runs of a real gateway; the second one's segments deleted whole: its log lines
    are what finds it."""
    generate_keypair(tmp_path / "audit.pem", tmp_path / "audit.pub")
    audit = tmp_path / "audit"
    yaml = (f"audit:\n  dir: {json.dumps(str(audit))}\n"
            f"  signing_key: {{file: {json.dumps(str(tmp_path / 'audit.pem'))}}}\n")
    kept: list[str] = []
    segments: list[set[Path]] = []
    for k in range(2):
        gw = GatewayProcess(tmp_path / f"gw{k}", upstreams_for(pg),
                            policy_dir=REPO / "policies" / "pci", extra_yaml=yaml)
        with gw:
            with psycopg.connect(gw.dsn("payments"), password=gw.token(),
                                 autocommit=True) as c:
                c.execute("select id from cards where id = %s", (k + 1,)).fetchone()
        assert gw.proc is not None and gw.proc.returncode == 0
        kept += [json.dumps(doc) for doc in gw.logs
                 if doc.get("event") in ("audit.checkpoint", "audit.run_started")]
        segments.append(set(audit.glob("*.jsonl")) - set().union(*segments))
    anchors = tmp_path / "siem.log"
    anchors.write_text("\n".join(kept) + "\n")
    assert len(kept) == 4  # each run's start and final checkpoint
    key = tmp_path / "audit.pem"
    assert verify(audit, key, anchors).returncode == 0
    backup = tmp_path / "second-run"
    backup.mkdir()
    for f in segments[1]:
        shutil.move(str(f), backup / f.name)
    assert verify(audit, key).returncode == 0
    held = verify(audit, key, anchors)
    assert held.returncode == 1 and "is anchored" in held.stdout


def test_a_line_nested_too_deep_in_an_anchor_file_is_skipped_not_a_crash(
        tmp_path: Path) -> None:
    nested = tmp_path / "gw.log"
    nested.write_text('{"event":"audit.checkpoint","x":' + "[" * 200_000 + "]" * 200_000
                      + "}\n")
    with pytest.raises(ValueError, match="no anchor lines"):
        load_anchors([nested])


def made_up(d: Path, *, instance: str = "gw1", n: int = 4) -> None:
    """What anyone can write without the key: a run start and `n` records (no checkpoint),
    as a gateway that is still running, or crashed, would leave them; its log lines go
    nowhere the auditor looks."""
    logger = logging.getLogger("pgwarden")
    saved = logger.handlers[:]
    logs.configure("info", io.StringIO())
    try:
        w = AuditWriter(FileSink(d, instance), instance=instance)  # no key
        w.start()
        for i in range(n):
            w.append(records.statement_record(ctx(), decision_seq=i, outcome="allowed",
                                              command="DELETE", rows=1000))
        w.flush()
        w.sink.close()
    finally:
        logger.handlers[:] = saved


def live(d: Path, key: Path, anchors: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return pgwarden("audit", "verify", str(d), "--key", str(key.with_suffix(".pub")), "--live",
                    "--max-unsigned", "10", "--anchors", str(anchors), *extra)


def test_with_anchors_a_made_up_instance_or_a_run_after_the_last_anchor_fails(
        tmp_path: Path, key: Path, log_lines: io.StringIO) -> None:
    """--live accepts an unsigned tail (a running gateway's); the gateway's log, given as
    anchors, announces every run it started, of every instance."""
    d = tmp_path / "audit"
    run(d, key, 3)
    anchors = save(log_lines, tmp_path / "gateway.log")
    assert live(d, key, anchors).returncode == 0
    other = tmp_path / "other"
    shutil.copytree(d, other)
    made_up(other, instance="gw1-w1")  # an instance the log never mentions
    out = live(other, key, anchors)
    assert out.returncode == 1 and "never announced" in out.stdout, out.stdout
    assert "gw1-w1" in out.stdout
    made_up(d)  # a run after the last anchor
    out = live(d, key, anchors)
    assert out.returncode == 1 and "never announced" in out.stdout, out.stdout


def test_a_pruned_log_replaced_past_its_anchors_fails(
        tmp_path: Path, key: Path, log_lines: io.StringIO) -> None:
    d = tmp_path / "audit"
    run(d, key, 5)
    anchors = save(log_lines, tmp_path / "gateway.log")
    last = max(a.seq for a in load_anchors([anchors]))
    for f in d.glob("*.jsonl"):  # retention, or someone, removed every file
        f.unlink()
    # a pruned-looking log that starts just after the newest anchor, not chained to it
    header = {"type": "segment", "segment": 7, "reason": "start", "sink": "file",
              "previous_segment": "audit-gw1-000006.jsonl", "previous_seq": last,
              "previous_hash": "ab" * 32, "instance": "gw1", "v": 1, "seq": last + 1,
              "ts": "2026-01-01T00:00:00.000000Z", "prev": "ab" * 32}
    from gateway.audit.canonical import canonical_bytes, chain_hash

    raw = canonical_bytes(header)
    line = raw[:-1] + b',"hash":"' + chain_hash("ab" * 32, raw).encode() + b'"}\n'
    (d / "audit-gw1-000007.jsonl").write_bytes(line)
    out = live(d, key, anchors, "--pruned")
    assert out.returncode == 1 and "not after the record anchored there" in out.stdout, \
        out.stdout


def test_anchors_are_logged_whatever_the_log_level(tmp_path: Path, key: Path) -> None:
    """They are evidence kept elsewhere, not diagnostics: `log.level: warning` must not
    turn them off (a run without them would then read as made up)."""
    logger = logging.getLogger("pgwarden")
    saved = logger.handlers[:], logger.level, logger.propagate
    stream = io.StringIO()
    logs.configure("warning", stream)
    try:
        run(tmp_path / "audit", key, 2)
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved  # type: ignore[misc]
    events = [json.loads(line)["event"] for line in stream.getvalue().splitlines()]
    assert events == ["audit.run_started", "audit.checkpoint"]


def test_a_start_that_fails_seals_its_run_rather_than_leave_a_crash(
        pg: PgBackend, tmp_path: Path) -> None:
    """The listen port taken: the gateway exits 2, its run in the audit trail ended by its
    final checkpoint, so the log verifies after the next, clean, run as it is."""
    import socket

    generate_keypair(tmp_path / "audit.pem", tmp_path / "audit.pub")
    audit = tmp_path / "audit"
    yaml = (f"audit:\n  dir: {json.dumps(str(audit))}\n"
            f"  signing_key: {{file: {json.dumps(str(tmp_path / 'audit.pem'))}}}\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = GatewayProcess(tmp_path / "gw0", upstreams_for(pg), extra_yaml=yaml,
                              port=taken.getsockname()[1])
        with pytest.raises(RuntimeError, match="exited with 2"):
            busy.start()
    with GatewayProcess(tmp_path / "gw1", upstreams_for(pg), extra_yaml=yaml):
        pass
    assert len(list(audit.glob("*.jsonl"))) == 2  # both runs wrote
    out = verify(audit, tmp_path / "audit.pem")
    assert out.returncode == 0, out.stdout
