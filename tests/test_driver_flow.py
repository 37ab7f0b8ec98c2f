# ruff: noqa: E501  (the Java client's source below keeps its statements on one line)
"""Real drivers through the gateway's relay flow control (a backlog behind a waiting
statement, IN_FLIGHT_MAX, reading held for named reasons, durability: fsync), compared
with the server itself: psycopg pipelines, pgJDBC batches and COPY, asyncpg executemany and
copy_records_to_table. (Written by a probe of that flow control, which found no bug.)"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import PgBackend, asyncpg_connect, audit_yaml, upstreams_for

from gateway.devtools.harness import GatewayProcess

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
JAR = Path("/usr/share/java/postgresql.jar")

JAVA = r'''
import java.sql.*; import java.util.*; import java.io.*;
import org.postgresql.PGConnection; import org.postgresql.copy.CopyManager;
public class ProbeClient {
  public static void main(String[] a) throws Exception {
    Properties p = new Properties(); p.setProperty("user", "ci-bot"); p.setProperty("password", a[1]);
    p.setProperty("sslmode", "disable");
    try (Connection c = DriverManager.getConnection(a[0], p)) {
      String s = a[2]; int n = Integer.parseInt(a[3]); String t = a[4];
      if (s.equals("batch")) {
        try (PreparedStatement ps = c.prepareStatement("insert into " + t + " values (?, ?)")) {
          for (int i = 0; i < n; i++) { ps.setInt(1, i); ps.setString(2, "row-" + i); ps.addBatch(); }
          int[] r = ps.executeBatch(); int sum = 0; for (int x : r) sum += x; System.out.println("batch\t" + sum);
        }
      } else if (s.equals("batchret")) {
        // batch whose every statement returns a row: pgJDBC's receive estimate matters
        try (PreparedStatement ps = c.prepareStatement("select ?::int, repeat('x', 200) || ?")) {
          for (int i = 0; i < n; i++) { ps.setInt(1, i); ps.setString(2, "r" + i); ps.addBatch(); }
          try { ps.executeBatch(); } catch (BatchUpdateException e) { System.out.println("expected-error\t" + e.getMessage().substring(0, 40)); }
        }
      } else if (s.equals("copy")) {
        CopyManager cm = c.unwrap(PGConnection.class).getCopyAPI();
        StringBuilder sb = new StringBuilder();
        for (int i = 0; i < n; i++) sb.append(i).append('\t').append("payload-").append(i).append("-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n");
        long k = cm.copyIn("copy " + t + " from stdin", new StringReader(sb.toString()));
        System.out.println("copy\t" + k);
      }
      try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery("select count(*), coalesce(sum(id),0) from " + t)) {
        rs.next(); System.out.println("check\t" + rs.getLong(1) + "\t" + rs.getLong(2));
      }
    }
  }
}
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def psql(pg: PgBackend, sql: str) -> None:
    pg.server.psql(sql, dbname="payments", user=pg.service.name)


def direct(pg: PgBackend) -> psycopg.Connection:
    return psycopg.connect(pg.dsn(pg.service), autocommit=True)


@pytest.fixture(scope="module")
def gws(pg: PgBackend, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[dict[str, GatewayProcess]]:
    """'held': the approvals policy with an admin API, audit durability os;
    'fsync': the same with audit durability: fsync."""
    psql(pg, "CREATE TABLE IF NOT EXISTS vault (id int, secret text);"
             "INSERT INTO vault SELECT 1, 'launch codes' WHERE NOT EXISTS (SELECT FROM vault)")
    out = {}
    gws = []
    for name, dur in (("held", "os"), ("fsync", "fsync")):
        d = tmp_path_factory.mktemp(f"probeP-{name}")
        port = free_port()
        extra = (f"admin:\n  grpc: 127.0.0.1:{port}\n  admin_groups: [gw-admins]\n"
                 f"approvals:\n  timeout: 30s\n" + audit_yaml(d) + f"  durability: {dur}\n")
        g = GatewayProcess(d / "gw", upstreams_for(pg), policy_dir=HERE / "policies" / "approvals",
                           extra_yaml=extra)
        g.admin_port = port  # type: ignore[attr-defined]
        g.__enter__()
        gws.append(g)
        out[name] = g
    try:
        yield out
    finally:
        for g in gws:
            g.__exit__(None, None, None)


def approve(gw: GatewayProcess, rid: str) -> None:
    token = gw.directory / "approver.jwt"
    token.write_text(gw.token(subject="alice", groups=("dba-oncall",)))
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "approvals", "approve", rid,
                          "--reason", "probe", "--admin", f"127.0.0.1:{gw.admin_port}",
                          "--token", str(token)], capture_output=True, text=True, timeout=30,
                         cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr


def connect(gw: GatewayProcess, subject: str = "ci-bot", **kw) -> psycopg.Connection:
    return psycopg.connect(gw.dsn("payments"), autocommit=True,
                           password=gw.token(subject=subject, groups=("ci",)), **kw)


def wait_rid(notices: list[str], timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for n in notices:
            if "held for approval: request " in n:
                return n.split("request ")[1].split()[0]
        time.sleep(0.05)
    raise AssertionError(f"no hold notice: {notices}")


def run_thread(fn) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def go() -> None:
        try:
            box["result"] = fn()
        except BaseException as e:
            box["error"] = e
    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t, box


def test_pipeline_held_statement_then_many_more_run_in_order_once_approved(
        gws: dict[str, GatewayProcess], pg: PgBackend) -> None:
    """psycopg 3 pipeline: inserts, a held read of vault, then 3000 more inserts. Nothing
    after the held statement runs before approval; once approved, all run in order and
    every result comes back."""
    gw = gws["held"]
    psql(pg, "DROP TABLE IF EXISTS probe_pipe; CREATE TABLE probe_pipe (id int, at timestamptz "
             "default clock_timestamp())")
    conn = connect(gw, subject="pipe-user")
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))

    def work():
        cur = conn.cursor()
        curs = []
        with conn.pipeline():
            for i in range(10):
                cur.execute("insert into probe_pipe (id) values (%s)", (i,))
            c2 = conn.cursor()
            c2.execute("select secret from vault")
            for i in range(10, 3010):
                c = conn.cursor()
                c.execute("insert into probe_pipe (id) values (%s) returning id", (i,))
                curs.append(c)
        return c2.fetchall(), [c.fetchone()[0] for c in curs]

    t, box = run_thread(work)
    try:
        rid = wait_rid(notices)
        time.sleep(2)
        with direct(pg) as d:
            n = d.execute("select count(*), max(id) from probe_pipe").fetchone()
        assert n[0] <= 10, f"statements after the held one ran before approval: {n}"
        approve(gw, rid)
        t.join(30)
        assert not t.is_alive(), "pipeline still hanging after approval"
        assert "error" not in box, box.get("error")
        secret, ids = box["result"]
        assert secret == [("launch codes",)]
        assert ids == list(range(10, 3010))
        with direct(pg) as d:
            rows = [r[0] for r in d.execute("select id from probe_pipe order by at, id")]
        assert rows == list(range(3010))
    finally:
        conn.close()


def test_asyncpg_executemany_and_copy_records_20k(gws: dict[str, GatewayProcess],
                                                  pg: PgBackend) -> None:
    """asyncpg executemany (pipelined Bind/Execute, one Sync) and copy_records_to_table of
    20k rows through a gateway with durability: fsync complete with all rows."""
    gw = gws["fsync"]
    psql(pg, "DROP TABLE IF EXISTS probe_am; CREATE TABLE probe_am (id int, v text)")

    async def main():
        conn = await asyncpg_connect(gw)
        try:
            await asyncio.wait_for(conn.executemany(
                "insert into probe_am values ($1, $2)",
                [(i, f"v{i}") for i in range(20000)]), 35)
            await asyncio.wait_for(conn.copy_records_to_table(
                "probe_am", records=[(i, f"c{i}") for i in range(20000, 40000)]), 35)
            return await conn.fetchrow("select count(*), sum(id) from probe_am")
        finally:
            await conn.close()

    row = asyncio.run(main())
    assert tuple(row) == (40000, sum(range(40000)))


@pytest.fixture(scope="module")
def java(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (shutil.which("javac") and JAR.is_file()):
        pytest.skip("needs javac and pgJDBC (Debian's libpostgresql-jdbc-java; .ci/run installs it)")
    d = tmp_path_factory.mktemp("probeP-java")
    (d / "ProbeClient.java").write_text(JAVA)
    built = subprocess.run(["javac", "-cp", str(JAR), "-d", str(d), str(d / "ProbeClient.java")],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    return d


def run_java(java: Path, gw: GatewayProcess, *args: str, timeout: float = 40
             ) -> list[list[str]]:
    url = f"jdbc:postgresql://{gw.host}:{gw.port}/payments"
    done = subprocess.run(["java", "-cp", f"{JAR}{os.pathsep}{java}", "ProbeClient", url,
                           gw.token(), *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return [line.split("\t") for line in done.stdout.splitlines()]


@pytest.mark.parametrize("which", ["held", "fsync"])
def test_jdbc_execute_batch_20k(java: Path, gws: dict[str, GatewayProcess], pg: PgBackend,
                                which: str) -> None:
    """pgJDBC executeBatch of 20k inserts completes with every row, durability os and fsync."""
    t = f"probe_jb_{which}"
    psql(pg, f"DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (id int, v text)")
    out = run_java(java, gws[which], "batch", "20000", t)
    assert out[-1] == ["check", "20000", str(sum(range(20000)))], out


@pytest.mark.parametrize("which", ["held", "fsync"])
def test_jdbc_copy_in_30mb(java: Path, gws: dict[str, GatewayProcess], pg: PgBackend,
                           which: str) -> None:
    """pgJDBC CopyManager.copyIn of ~30 MB completes with every row."""
    t = f"probe_jc_{which}"
    psql(pg, f"DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (id int, v text)")
    n = 300000
    out = run_java(java, gws[which], "copy", str(n), t)
    assert out[-1] == ["check", str(n), str(sum(range(n)))], out


def test_pipeline_error_early_then_past_in_flight_max(gws: dict[str, GatewayProcess],
                                                      pg: PgBackend) -> None:
    """psycopg pipeline of 9000 statements in one sync where the 5th fails: the server
    skips the rest; the driver gets the error (not a hang) and the session goes on."""
    gw = gws["held"]
    conn = connect(gw)
    try:
        def work():
            try:
                with conn.pipeline():
                    cur = conn.cursor()
                    for i in range(9000):
                        cur.execute("select 1/%s", (0 if i == 5 else 1,))
            except psycopg.errors.DivisionByZero:
                return "error"
            return "no error"
        t, box = run_thread(work)
        t.join(35)
        assert not t.is_alive(), "hung"
        assert box.get("result") == "error", box
        assert conn.execute("select 42").fetchone() == (42,)
    finally:
        conn.close()


def test_asyncpg_executemany_error_midway(gws: dict[str, GatewayProcess], pg: PgBackend) -> None:
    """asyncpg executemany of 20k rows where row 300 violates a key: the error comes back
    promptly and the session goes on."""
    gw = gws["held"]
    psql(pg, "DROP TABLE IF EXISTS probe_ame; CREATE TABLE probe_ame (id int primary key)")

    async def main():
        import asyncpg
        conn = await asyncpg_connect(gw)
        try:
            rows = [(i if i != 300 else 299,) for i in range(20000)]
            with pytest.raises(asyncpg.UniqueViolationError):
                await asyncio.wait_for(conn.executemany(
                    "insert into probe_ame values ($1)", rows), 30)
            return await asyncio.wait_for(conn.fetchval("select count(*) from probe_ame"), 10)
        finally:
            await conn.close()
    assert asyncio.run(main()) == 0


def test_slow_reader_copy_to(gws: dict[str, GatewayProcess], pg: PgBackend) -> None:
    """COPY TO of ~20 MB (no digit runs: the safety net would mask Luhn-valid ones) read
    slowly by psycopg arrives byte-identical to the direct one."""
    gw = gws["fsync"]
    q = "copy (select g, repeat(chr(97 + g % 26), 90) from generate_series(1, 200000) g) to stdout"
    with direct(pg) as d:
        buf = io.BytesIO()
        with d.cursor().copy(q) as cp:
            for chunk in cp:
                buf.write(chunk)
        want = buf.getvalue()
    conn = connect(gw)
    try:
        got = io.BytesIO()
        start = time.monotonic()
        with conn.cursor().copy(q) as cp:
            for k, chunk in enumerate(cp):
                got.write(chunk)
                if k % 4000 == 0:
                    time.sleep(0.2)
        assert time.monotonic() - start < 35
        assert got.getvalue() == want
        assert conn.execute("select 1").fetchone() == (1,)
    finally:
        conn.close()


def test_psycopg_copy_from_30mb_and_pipeline_after(gws: dict[str, GatewayProcess],
                                                   pg: PgBackend) -> None:
    """psycopg COPY FROM STDIN of ~30 MB, then a 6000-statement pipeline: all rows land."""
    gw = gws["fsync"]
    psql(pg, "DROP TABLE IF EXISTS probe_pc; CREATE TABLE probe_pc (id int, v text)")
    conn = connect(gw)
    try:
        n = 300000
        with conn.cursor().copy("copy probe_pc from stdin") as cp:
            for i in range(0, n, 1000):
                cp.write("".join(f"{j}\tpayload-{j}-{'y' * 80}\n" for j in range(i, i + 1000)))
        with conn.pipeline():
            cur = conn.cursor()
            for i in range(n, n + 6000):
                cur.execute("insert into probe_pc values (%s, 'p')", (i,))
        assert conn.execute("select count(*), sum(id) from probe_pc").fetchone() == (
            n + 6000, sum(range(n + 6000)))
    finally:
        conn.close()


def test_client_that_leaves_mid_statement_has_it_canceled(gws: dict[str, GatewayProcess],
                                                         pg: PgBackend) -> None:
    """A psycopg client whose socket closes while pg_sleep(60) runs: the statement is
    canceled at the server within a few seconds."""
    gw = gws["held"]
    conn = connect(gw)
    t, _box = run_thread(lambda: conn.execute("select pg_sleep(60) as probe_leaver"))
    time.sleep(1.0)
    s = socket.socket(fileno=os.dup(conn.pgconn.socket))
    s.shutdown(socket.SHUT_RDWR)
    s.close()
    deadline = time.monotonic() + 8
    with direct(pg) as d:
        while True:
            n = d.execute("select count(*) from pg_stat_activity where state = 'active' "
                          "and query like '%probe_leaver%' and pid <> pg_backend_pid()"
                          ).fetchone()[0]
            if n == 0:
                break
            assert time.monotonic() < deadline, "the statement still runs upstream"
            time.sleep(0.2)
    t.join(10)
    conn.close()
