"""While the audit trail cannot be written nothing runs, also what was decided before the
disk filled: the rest of a batch held for approval, a COPY FROM whose data was already
flowing. The disk is a 1 MB tmpfs filled to its last byte."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import PgBackend, fill_disk, upstreams_for
from rawclient import RawClient

from gateway.audit import generate_keypair
from gateway.devtools.harness import GatewayProcess
from gateway.wire import frontend as fe

REPO = Path(__file__).resolve().parents[1]
APPROVALS_POLICY = Path(__file__).resolve().parent / "policies" / "approvals"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "disk"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def until_refused(gw: GatewayProcess) -> None:
    """Another session's statements until one gets 58030: the writer knows the sink fails.
    (Its repeats write nothing before they run: their records fail to go out with the
    writer thread's next batch, within a second.)"""
    with psycopg.connect(gw.dsn("payments"), password=gw.token(subject="other"),
                         autocommit=True) as c:
        deadline, i = time.monotonic() + 10, 0
        while time.monotonic() < deadline:
            i += 1
            try:
                c.execute(f"select {i} as k").fetchone()
            except psycopg.Error as e:
                assert e.sqlstate == "58030", e
                return
    raise AssertionError("the audit trail never failed")


def audit_yaml(disk: Path, key: Path, extra: str = "") -> str:
    return (f"{extra}audit:\n  dir: {disk / 'audit'}\n  signing_key: {{file: {key}}}\n"
            "  retry_interval: 0.2s\n")


def count(pg: PgBackend, table: str, value: int) -> int:
    with psycopg.connect(pg.dsn(pg.service)) as direct:
        row = direct.execute(f"select count(*) from {table} where v = %s",  # noqa: S608
                             (value,)).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("behind", ["query", "prepared"])
def test_what_follows_a_held_statement_does_not_run_once_the_trail_failed(
        pg: PgBackend, tmp_path: Path, disk: Path, behind: str) -> None:
    """The batch was decided when it came; the approver acts after the disk filled."""
    pg.server.psql("create table if not exists vault (id int, secret text);"
                   "create table if not exists outage_held (v int);"
                   "grant all on outage_held to public;",
                   dbname="payments", user=pg.service.name)
    generate_keypair(tmp_path / "audit.pem", tmp_path / "audit.pub")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    extra = f"admin:\n  grpc: 127.0.0.1:{port}\napprovals:\n  timeout: 30s\n"
    value = 4242 if behind == "query" else 4343
    with GatewayProcess(tmp_path / "gw", upstreams_for(pg), policy_dir=APPROVALS_POLICY,
                        extra_yaml=audit_yaml(disk, tmp_path / "audit.pem", extra)) as gw, \
            RawClient(gw) as client:
        client.login(gw.token(subject="holder", groups=("ci",)))
        if behind == "prepared":
            client.send(fe.Parse("w", "insert into outage_held values ($1::int)", ()).encode()
                        + fe.Sync().encode())
            client.read_until(b"Z")
            rest = (fe.Bind("", "w", (), (str(value).encode(),), ()).encode()
                    + fe.Execute("", 0).encode() + fe.Sync().encode())
        else:
            rest = fe.Query(f"insert into outage_held values ({value})").encode()  # noqa: S608
        client.send(fe.Query("select secret from vault").encode() + rest)  # held
        notice = client.read_message()
        assert notice is not None and notice.type == b"N", notice
        rid = notice.fields()["M"].split("request ")[1].split()[0]
        filler = fill_disk(disk)
        until_refused(gw)
        token = tmp_path / "alice.jwt"
        token.write_text(gw.token(subject="alice", groups=("dba-oncall",)))
        approved = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "approvals", "approve", rid, "--reason",
             "CHG-1", "--admin", f"127.0.0.1:{port}", "--token", str(token)],
            capture_output=True, text=True, timeout=30, check=False, cwd=REPO)
        assert approved.returncode == 0, approved.stdout + approved.stderr
        answers = client.read_until(b"Z") + client.read_until(b"Z")
        codes = [m.fields().get("C") for m in answers if m.type == b"E"]
        assert codes and set(codes) == {"58030"}, codes
        assert count(pg, "outage_held", value) == 0
        filler.unlink()


def test_a_copy_from_begun_before_the_trail_failed_does_not_commit(
        pg: PgBackend, tmp_path: Path, disk: Path) -> None:
    pg.server.psql("create table if not exists outage_copy (v int);"
                   "grant all on outage_copy to public;", dbname="payments",
                   user=pg.service.name)
    generate_keypair(tmp_path / "audit.pem", tmp_path / "audit.pub")

    def copy_data(row: bytes) -> bytes:
        return b"d" + struct.pack("!i", len(row) + 4) + row

    with GatewayProcess(tmp_path / "gw", upstreams_for(pg),
                        extra_yaml=audit_yaml(disk, tmp_path / "audit.pem")) as gw, \
            RawClient(gw) as client:
        client.login(gw.token(subject="copier"))
        client.send(fe.Query("copy outage_copy from stdin").encode())
        started = client.read_message()
        assert started is not None and started.type == b"G", started
        client.send(copy_data(b"777\n"))
        filler = fill_disk(disk)
        until_refused(gw)
        client.send(copy_data(b"777\n") + b"c" + struct.pack("!i", 4))  # CopyDone
        answers = client.read_until(b"Z")
        (error,) = [m for m in answers if m.type == b"E"]
        assert "audit trail cannot be written" in error.fields()["M"]
        assert count(pg, "outage_copy", 777) == 0
        filler.unlink()
        # and the session goes on once the trail recovers
        for _ in range(50):
            client.send(fe.Query("select 1").encode())
            if not [m for m in client.read_until(b"Z") if m.type == b"E"]:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the trail did not recover")
