"""Ordinary clients work through the gateway unchanged, with a JWT as their password."""

from __future__ import annotations

import asyncio
import io
import ssl
import subprocess
import time

import asyncpg
import psycopg
import pytest
from conftest import PgBackend

from gateway.devtools.harness import GatewayProcess


def connect(gateway: GatewayProcess, token: str, conn: str = "payments", sslmode: str = "require",
            **kw: object) -> psycopg.Connection:
    return psycopg.connect(gateway.dsn(conn, sslmode), password=token, **kw)


def test_psycopg_text_and_binary_over_tls(gateway: GatewayProcess, token: str) -> None:
    with connect(gateway, token) as c:
        assert c.info.pgconn.ssl_in_use
        assert c.execute("select current_user").fetchone() == ("pgwarden_svc",)
        rows = c.execute("select id, holder from cards order by id").fetchall()
        assert [r[1] for r in rows][:2] == ["Alice Martin", "Bob Chen"]
        with c.cursor(binary=True) as cur:
            cur.execute("select %s::int8 * 2, %s::numeric, %s::bytea, now()",
                        (21, "1.50", b"\x00\xff"))
            n, num, blob, ts = cur.fetchone()
            assert (n, str(num), blob) == (42, "1.50", b"\x00\xff")
            assert ts.tzinfo is not None


def test_psycopg_pipeline_mode(gateway: GatewayProcess, token: str) -> None:
    with connect(gateway, token) as c, c.pipeline():
        curs = [c.execute("select %s::int", (i,)) for i in range(50)]
        c.execute("select pg_sleep(0)")
    assert [cur.fetchone()[0] for cur in curs] == list(range(50))


def test_transactions_commit_and_rollback(gateway: GatewayProcess, token: str) -> None:
    with connect(gateway, token) as c:
        c.execute("create temp table t (x int)")
        with c.transaction():
            c.execute("insert into t values (1)")
        with pytest.raises(psycopg.errors.DivisionByZero), c.transaction():
            c.execute("insert into t values (2)")
            c.execute("select 1/0")
        assert c.execute("select array_agg(x) from t").fetchone() == ([1],)
        # An error inside an explicit transaction leaves it failed until rollback.
        c.commit()
        c.autocommit = True
        c.execute("begin")
        with pytest.raises(psycopg.errors.UndefinedTable):
            c.execute("select * from no_such_table")
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        c.execute("rollback")
        assert c.execute("select 1").fetchone() == (1,)


def test_copy_out_and_in(gateway: GatewayProcess, token: str) -> None:
    with connect(gateway, token) as c:
        c.execute("create temp table amounts (id int, amount numeric)")
        rows = [(i, f"{i}.25") for i in range(2000)]
        with c.cursor().copy("copy amounts from stdin") as cp:
            for r in rows:
                cp.write_row(r)
        assert c.execute("select count(*), sum(id) from amounts").fetchone() == (2000, 1999000)
        buf = io.BytesIO()
        sql = "copy (select * from amounts order by id) to stdout (format csv)"
        with c.cursor().copy(sql) as cp:
            for chunk in cp:
                buf.write(chunk)
        lines = buf.getvalue().decode().splitlines()
        assert lines[0] == "0,0.25" and len(lines) == 2000
        with c.cursor(binary=True).copy("copy amounts to stdout (format binary)") as cp:
            cp.set_types(["int4", "numeric"])
            assert sum(1 for _ in cp.rows()) == 2000


def test_copy_failure_keeps_session_usable(gateway: GatewayProcess, token: str) -> None:
    with connect(gateway, token) as c:
        c.execute("create temp table n (x int)")
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            with c.cursor().copy("copy n from stdin") as cp:
                cp.write(b"1\nnot-a-number\n")
        c.rollback()
        assert c.execute("select 1").fetchone() == (1,)


def test_listen_notify_and_notices(gateway: GatewayProcess, token: str) -> None:
    with connect(gateway, token, autocommit=True) as listener, \
            connect(gateway, token, autocommit=True) as sender:
        notices: list[str] = []
        listener.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        listener.execute("listen jobs")
        sender.execute("select pg_notify('jobs', 'build 42 done')")
        got = list(listener.notifies(timeout=5, stop_after=1))
        assert [(n.channel, n.payload) for n in got] == [("jobs", "build 42 done")]
        listener.execute("do $$ begin raise notice 'hello from plpgsql'; end $$")
        assert notices == ["hello from plpgsql"]


def test_parameter_status_relayed(gateway: GatewayProcess, token: str) -> None:
    with connect(gateway, token, autocommit=True) as c:
        assert c.info.parameter_status("server_version").startswith("18")
        c.execute("set datestyle to 'German'")
        assert c.info.parameter_status("DateStyle").startswith("German")
        assert c.info.backend_pid != 0


def test_md5_and_trust_upstreams(gateway: GatewayProcess, token: str) -> None:
    for conn, role in (("legacy", "legacy_svc"), ("trusty", "trust_svc")):
        with connect(gateway, token, conn) as c:
            assert c.execute("select current_user").fetchone() == (role,)


def test_psql_plaintext_on_loopback(gateway: GatewayProcess, token: str, pg: PgBackend) -> None:
    env = pg.server.env()
    env["PGPASSWORD"] = token
    out = subprocess.run(
        [str(pg.server.bin_dir / "psql"), "-X", "-A", "-t", "-h", "127.0.0.1", "-p",
         str(gateway.port), "-U", "ci-bot", "-d", "payments", "-v", "ON_ERROR_STOP=1",
         "-c", "select count(*) from cards", "-c", "select current_user"],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["5", "pgwarden_svc"]


PSQL_PIPELINE = """\\startpipeline
select id from cards where id = $1 \\bind 1 \\sendpipeline
select 1/0 \\bind \\sendpipeline
select id from cards where id = $1 \\bind 5 \\sendpipeline
\\syncpipeline
select id from cards where id = $1 \\bind 2 \\sendpipeline
\\endpipeline
select 'after the pipeline';
"""


def test_psql_pipeline_skips_to_the_sync_after_an_error(gateway: GatewayProcess, token: str,
                                                         pg: PgBackend) -> None:
    """psql 18's pipeline mode: runs sent without waiting, an error skipping the rest of
    its Sync segment (not the next segment), the session in step afterwards."""
    psql = str(pg.server.bin_dir / "psql")
    version = subprocess.run([psql, "--version"], capture_output=True, text=True).stdout
    if int(version.split()[2].split(".")[0]) < 18:
        pytest.skip(f"psql's pipeline commands need psql 18, not {version.strip()}")
    env = pg.server.env()
    env["PGPASSWORD"] = token
    out = subprocess.run(
        [psql, "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(gateway.port), "-U", "ci-bot",
         "-d", "payments", "-f", "-"],
        input=PSQL_PIPELINE, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert out.stdout.split() == ["1", "2", "after", "the", "pipeline"], out.stderr
    assert "ERROR:  division by zero" in out.stderr


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_modes(gateway: GatewayProcess, token: str, pg: PgBackend, mode: str) -> None:
    env = pg.server.env()
    env["PGPASSWORD"] = token
    script = "\\set id random(1, 5)\nselect pan from cards where id = :id;\n"
    path = gateway.directory / f"bench-{mode}.sql"
    path.write_text(script)
    out = subprocess.run(
        [str(pg.server.bin_dir / "pgbench"), "-n", "-h", "127.0.0.1", "-p", str(gateway.port),
         "-U", "ci-bot", "-M", mode, "-c", "4", "-j", "2", "-t", "200", "-f", str(path),
         "payments"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "number of transactions actually processed: 800/800" in out.stdout
    assert "number of failed transactions: 0" in out.stdout


def _tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def _asyncpg(gateway: GatewayProcess, token: str) -> asyncpg.Connection:
    return await asyncpg.connect(host="127.0.0.1", port=gateway.port, user="ci-bot",
                                 database="payments", password=token, ssl=_tls(), timeout=10)


def test_asyncpg_prepared_binary(gateway: GatewayProcess, token: str) -> None:
    async def main() -> None:
        c = await _asyncpg(gateway, token)
        try:
            stmt = await c.prepare("select id, holder, $1::int + id as n from cards where id <= $2")
            rows = await stmt.fetch(10, 3)
            assert [(r["id"], r["n"]) for r in rows] == [(1, 11), (2, 12), (3, 13)]
            async with c.transaction():
                total = 0
                async for r in c.cursor("select g from generate_series(1, 1000) g", prefetch=100):
                    total += r["g"]
                assert total == 500500
            assert await c.fetchval("select $1::bytea", b"\x00\x01") == b"\x00\x01"
        finally:
            await c.close()

    asyncio.run(main())


def test_asyncpg_cancel_returns_promptly_and_connection_survives(
        gateway: GatewayProcess, token: str) -> None:
    async def main() -> None:
        c = await _asyncpg(gateway, token)
        try:
            t0 = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await c.fetchval("select pg_sleep(30)", timeout=0.5)
            assert time.monotonic() - t0 < 5
            assert await c.fetchval("select 7") == 7
        finally:
            await c.close()

    asyncio.run(main())


def test_psycopg_cancel(gateway: GatewayProcess, token: str) -> None:
    with connect(gateway, token) as c:
        import threading

        timer = threading.Timer(0.5, c.cancel_safe)
        timer.start()
        t0 = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            c.execute("select pg_sleep(30)")
        assert time.monotonic() - t0 < 5
        c.rollback()
        assert c.execute("select 1").fetchone() == (1,)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_workers_share_the_port_and_cancel_across_workers(pg: PgBackend, tmp_path) -> None:
    """Cancel requests land on whichever worker the kernel picks; each must still work."""
    import threading

    from conftest import upstreams_for

    gw = GatewayProcess(tmp_path, upstreams_for(pg), workers=2, port=_free_port()).start()
    try:
        for worker in (0, 1):  # start() returns once the first worker listens
            gw.wait_for_log(lambda d, w=worker: d.get("event") == "gateway.listening"
                            and d.get("worker") == w)
        token = gw.token()
        # The kernel hashes each connection to a worker: 8 land on one worker once in 128
        # runs, 32 once in two billion.
        conns = [connect(gw, token) for _ in range(8)]
        while len({c.info.backend_pid >> 24 for c in conns}) < 2 and len(conns) < 32:
            conns.append(connect(gw, token))
        workers = {c.info.backend_pid >> 24 for c in conns}
        assert workers == {0, 1}, "SO_REUSEPORT should spread sessions over both workers"
        for c in conns:
            timer = threading.Timer(0.3, c.cancel_safe)
            timer.start()
            t0 = time.monotonic()
            with pytest.raises(psycopg.errors.QueryCanceled):
                c.execute("select pg_sleep(20)")
            assert time.monotonic() - t0 < 5
            c.rollback()
            c.close()
    finally:
        code = gw.stop()
        assert code == 0, gw.log_text()[-6000:]


def test_client_drop_closes_the_upstream_session(gateway: GatewayProcess, token: str,
                                                 pg: PgBackend) -> None:
    env = pg.server.env()
    env["PGPASSWORD"] = token
    env["PGAPPNAME"] = "drop-me-7f3a"
    proc = subprocess.Popen(
        [str(pg.server.bin_dir / "psql"), "-X", "-h", "127.0.0.1", "-p", str(gateway.port),
         "-U", "ci-bot", "-d", "payments"],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    count = "select count(*) from pg_stat_activity where application_name = 'drop-me-7f3a'"

    def backends() -> int:
        return int(pg.server.psql(count).strip())

    try:
        deadline = time.monotonic() + 10
        while backends() != 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert backends() == 1
    finally:
        proc.kill()  # no Terminate message: the socket just goes away
        proc.wait()
    deadline = time.monotonic() + 10
    while backends() != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert backends() == 0


def test_a_query_string_of_too_many_statements_is_refused(gateway: GatewayProcess,
                                                          token: str) -> None:
    """Each statement costs the gateway its analysis and decision on an event loop other
    sessions share: 50,000 in one string held every other session for 11 s. Past
    MAX_STATEMENTS the string is refused at once, and the session goes on."""
    from gateway.sql.analyzer import MAX_STATEMENTS

    with connect(gateway, token, autocommit=True) as conn:
        started = time.monotonic()
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="at most"):
            conn.execute(";".join(["select 1"] * 50_000))
        assert time.monotonic() - started < 2.0
        cur = conn.execute(";".join(["select 1"] * (MAX_STATEMENTS - 1) + ["select 2"]))
        while cur.nextset():  # (psycopg holds each result; the last is the string's last)
            pass
        assert cur.fetchone() == (2,)
