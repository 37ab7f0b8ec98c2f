"""Inline masking through a real gateway: the policy masks columns, the gateway rewrites
results (DataRow text/binary, COPY text/csv/binary, RETURNING, cursors, prepared
statements, portals) and refuses what it cannot mask faithfully."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest
from conftest import PgBackend, asyncpg_connect, upstreams_for

import gateway.audit.chain
import gateway.enforce.shapes
import gateway.policy.runtime
import gateway.wire.framing  # noqa: F401 -- with the three above: every optional C module
from gateway import native
from gateway.devtools.harness import GatewayProcess
from gateway.masking import rows as masking_rows
from gateway.masking.methods import hash_token

POLICY = Path(__file__).resolve().parent / "policies" / "masking"
HASH_KEY = b"masking-e2e-hash-key-0123456789"
PANS = ("4111111111111111", "5555555555554444", "378282246310005", "6011111111111117",
        "4000056655665556")
LAST4 = {p: "************" + p[-4:] for p in PANS}

SETUP = """
CREATE TABLE IF NOT EXISTS mask_methods (
    id int PRIMARY KEY, first6 text, hashed text, redacted text, nulled text, wrong text,
    plain text);
INSERT INTO mask_methods VALUES
    (1, '4111111111111111', '4111111111111111', '4111111111111111', '4111111111111111',
     '4111111111111111', 'public')
ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS mask_numeric (id int PRIMARY KEY, first6 numeric);
INSERT INTO mask_numeric VALUES (1, 4111111111111111) ON CONFLICT DO NOTHING;
"""


@pytest.fixture(scope="module")
def gw(pg: PgBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    pg.server.psql(SETUP, dbname="payments", user=pg.service.name)
    d = tmp_path_factory.mktemp("masking")
    (d / "hash.key").write_bytes(HASH_KEY)
    extra = f"masking:\n  hash_key: {{file: {d / 'hash.key'}}}\n"
    gw = GatewayProcess(d / "gw", upstreams_for(pg), policy_dir=POLICY, extra_yaml=extra)
    with gw:
        yield gw


def connect(gw: GatewayProcess, **kw: object) -> psycopg.Connection:
    return psycopg.connect(gw.dsn("payments"), password=gw.token(), autocommit=True, **kw)


def no_pan(blob: object) -> None:
    text = repr(blob)
    for p in PANS:
        assert p not in text and p[:-4] not in text, f"a PAN leaked: {text[:300]}"


# -- plain references are masked in place -------------------------------------------------------


def test_select_masks_pan_in_text_results(gw: GatewayProcess) -> None:
    with connect(gw) as c:
        rows = c.execute("select id, holder, pan from cards order by id").fetchall()
    assert [r[2] for r in rows] == [LAST4[p] for p in PANS]
    assert rows[0][1] == "Alice Martin"


def test_renames_subqueries_ctes_views_and_set_operations_stay_masked(gw: GatewayProcess) -> None:
    with connect(gw) as c:
        for sql in (
            "select pan as x from cards order by id",
            "select x from (select id, pan as x from cards) s order by id",
            "with t as (select id, pan from cards) select pan from t order by id",
            "select c.* from cards c order by id",
            "select pan from cards union all select 'none' order by 1",
        ):
            rows = c.execute(sql).fetchall()
            no_pan(rows)
            assert any(str(v).startswith("************") for r in rows for v in r), sql


def test_binary_results_declare_masked_columns_as_text(gw: GatewayProcess) -> None:
    with connect(gw) as c, c.cursor(binary=True) as cur:
        cur.execute("select id, pan from cards where id = %s", (1,))
        assert cur.fetchone() == (1, "************1111")
        assert cur.description[1].type_code == 25  # text


def test_prepared_statements_and_portals(gw: GatewayProcess) -> None:
    with connect(gw) as c:
        for _ in range(3):  # psycopg prepares on the third execution
            row = c.execute("select pan from cards where id = %s", (2,), prepare=True).fetchone()
            assert row == ("************4444",)
        c.autocommit = False
        with c.cursor(name="srv") as cur:  # a named portal fetched in batches
            cur.itersize = 2
            cur.execute("select pan from cards order by id")
            assert [r[0] for r in cur] == [LAST4[p] for p in PANS]
        c.rollback()


def test_sql_cursors_and_execute(gw: GatewayProcess) -> None:
    with connect(gw) as c:
        c.autocommit = False
        c.execute("declare k cursor for select id, pan from cards order by id")
        assert c.execute("fetch 2 from k").fetchall() == [(1, LAST4[PANS[0]]),
                                                          (2, LAST4[PANS[1]])]
        no_pan(c.execute("fetch all from k").fetchall())
        c.rollback()
        c.autocommit = True
        c.execute("prepare q(int) as select pan from cards where id = $1")
        assert c.execute("execute q(3)").fetchone() == ("************0005",)
        c.execute("deallocate q")


def test_returning_rows_are_masked(gw: GatewayProcess) -> None:
    with connect(gw) as c:
        c.autocommit = False
        row = c.execute("update cards set holder = holder where id = 4 returning pan").fetchone()
        assert row == ("************1117",)
        row = c.execute("insert into cards (holder, pan) values ('Z', '4242424242424242') "
                        "returning id, pan").fetchone()
        assert row[1] == "************4242"
        c.rollback()


def test_pipeline_mixes_masked_and_unmasked_results(gw: GatewayProcess) -> None:
    with connect(gw) as c, c.pipeline():
        curs = []
        for i in range(1, 6):
            curs.append(c.execute("select %s::int", (i,)))
            curs.append(c.execute("select pan from cards where id = %s", (i,)))
    values = [cur.fetchone()[0] for cur in curs]
    assert values[0::2] == [1, 2, 3, 4, 5]
    assert values[1::2] == [LAST4[p] for p in PANS]


def test_multi_statement_query_masks_only_its_masked_statement(gw: GatewayProcess) -> None:
    with connect(gw) as c:
        cur = c.execute("select pan from cards where id = 1; select '4111111111111111' as lit; "
                        "select holder, pan from cards where id = 2")
        first = cur.fetchall()
        assert cur.nextset()
        second = cur.fetchall()
        assert cur.nextset()
        third = cur.fetchall()
    assert first == [("************1111",)]
    assert second != [("4111111111111111",)]  # the safety net catches a literal PAN
    assert third == [("Bob Chen", "************4444")]


# -- mask methods ---------------------------------------------------------------------------------


def test_each_mask_method(gw: GatewayProcess) -> None:
    with connect(gw) as c:
        row = c.execute("select first6, hashed, redacted, nulled, plain "
                        "from mask_methods where id = 1").fetchone()
    assert row == ("411111******1111", hash_token(b"4111111111111111", HASH_KEY).decode(),
                   "[REDACTED]", None, "public")


def test_unknown_method_denies(gw: GatewayProcess) -> None:
    with connect(gw) as c, pytest.raises(psycopg.errors.InsufficientPrivilege):
        c.execute("select wrong from mask_methods")


# -- what cannot be masked faithfully is refused -----------------------------------------------


@pytest.mark.parametrize("sql", [
    "select upper(pan) from cards",
    "select pan::bigint from cards",
    "select pan || '' from cards",
    "select substr(pan, 1, 6) from cards",
    "select string_agg(pan, ',') from cards",
    "select row_to_json(c) from cards c",
    "select c from cards c",
    "select array[pan] from cards",
    "select (select pan from cards limit 1)",
    "create temp table stash as select pan from cards",
    "insert into mask_methods (id, plain) select id + 100, pan from cards",
    # JSON_TABLE parses its input and runs paths over it: a cast's error quoted the
    # PAN times ten, past the safety net's Luhn check
    "select holder from cards, json_table(pan format json, '$' columns "
    "(x date path '$ * 10' error on error)) jt where id = 1",
    "select jt.x from cards, json_table(pan format json, '$' columns (x text path '$')) jt",
])
def test_expressions_over_a_masked_column_are_refused(gw: GatewayProcess, sql: str) -> None:
    with connect(gw) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
            c.execute(sql)
        assert "public.cards.pan" in str(e.value)
        assert c.execute("select 1").fetchone() == (1,)  # the session goes on


# -- COPY ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", ["", "(format csv)", "(format csv, header)",
                                     "(format text, delimiter '|')",
                                     "(format csv, delimiter ';', quote '''')"])
def test_copy_text_and_csv_are_masked(gw: GatewayProcess, options: str) -> None:
    with connect(gw) as c, c.cursor() as cur:
        data = b""
        sql = "copy (select id, holder, pan from cards order by id) to stdout " + options  # noqa: S608
        with cur.copy(sql) as copy:
            for chunk in copy:
                data += bytes(chunk)
    no_pan(data)
    assert data.count(b"************") == len(PANS)
    assert b"Alice Martin" in data


def test_copy_binary_is_masked(gw: GatewayProcess) -> None:
    with connect(gw) as c, c.cursor() as cur:
        with cur.copy("copy cards (id, pan) to stdout (format binary)") as copy:
            copy.set_types(["int4", "text"])
            rows = list(copy.rows())
    assert sorted(rows) == [(i + 1, LAST4[p]) for i, p in enumerate(PANS)]


def psql(gw: GatewayProcess, pg: PgBackend, *commands: str) -> str:
    env = dict(os.environ, PGPASSWORD=gw.token())
    args = [str(pg.server.bin_dir / "psql"), "-X", "-A", "-t", "-h", gw.host, "-p",
            str(gw.port), "-U", "ci-bot", "-d", "payments", "-v", "ON_ERROR_STOP=1"]
    for command in commands:
        args += ["-c", command]
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=30,
                         check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_psql_select_and_copy(gw: GatewayProcess, pg: PgBackend) -> None:
    out = psql(gw, pg, "select pan from cards order by id",
               "copy cards to stdout with (format csv)",
               r"\copy (select id, pan from cards) to stdout")
    no_pan(out)
    assert out.count("************") == 3 * len(PANS)


# -- asyncpg (binary protocol throughout) ----------------------------------------------------------


def test_asyncpg_binary_results_are_masked(gw: GatewayProcess) -> None:
    async def main() -> None:
        conn = await asyncpg_connect(gw)
        try:
            rows = await conn.fetch("select id, pan from cards order by id")
            assert [r["pan"] for r in rows] == [LAST4[p] for p in PANS]
            stmt = await conn.prepare("select pan from cards where id = $1")
            assert await stmt.fetchval(5) == "************5556"
            async with conn.transaction():
                got = [r[0] async for r in conn.cursor("select pan from cards order by id",
                                                        prefetch=2)]
            assert got == [LAST4[p] for p in PANS]
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch("select lower(pan) from cards")
            assert await conn.fetchval("select 1") == 1
        finally:
            await conn.close()

    asyncio.run(main())


@pytest.fixture(scope="module")
def gw_pure(pg: PgBackend, gw: GatewayProcess,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The gateway with the compiled row loop switched off, as on a machine without a C
    compiler."""
    d = tmp_path_factory.mktemp("masking-pure")
    with GatewayProcess(d / "gw", upstreams_for(pg), policy_dir=POLICY,
                        extra_yaml=gw.extra_yaml,
                        extra_env={"PGWARDEN_PURE_PYTHON": "1"}) as g:
        yield g


@pytest.mark.parametrize("loop", ["compiled if built", "python"])
def test_large_results_are_masked_across_reads(gw: GatewayProcess, gw_pure: GatewayProcess,
                                               loop: str) -> None:
    """25k masked rows span many network reads: rows after the first read are masked as
    the gateway walks them (one pass), the rest by the per-buffer rewrite; every one is."""
    gw = gw_pure if loop == "python" else gw
    started = [r for r in gw.logs if r.get("event") == "gateway.listening"]
    assert started and started[0]["masked_row_loop"] == (
        "python" if loop == "python" or not masking_rows.compiled() else "compiled")
    # every compiled module this test process runs, or none with PGWARDEN_PURE_PYTHON
    assert started[0]["compiled"] == ([] if loop == "python" else native.loaded())
    assert loop == "python" or not masking_rows.compiled() or \
        "gateway.masking._rowwalk" in started[0]["compiled"]
    sql = "select g, c.pan from cards c, generate_series(1, 5000) g order by g, c.id"
    expected = [LAST4[p] for p in PANS] * 5000
    with connect(gw) as c:
        for binary in (False, True):
            with c.cursor(binary=binary) as cur:
                rows = cur.execute(sql).fetchall()
            assert [r[1] for r in rows] == expected and len(rows) == 25000
            no_pan(rows)

    async def main() -> None:
        conn = await asyncpg_connect(gw)
        try:
            assert [r["pan"] for r in await conn.fetch(sql)] == expected
        finally:
            await conn.close()

    asyncio.run(main())


# -- safety net in "error" mode ----------------------------------------------------------------


def test_safety_net_error_mode_ends_the_session_instead_of_masking(
        pg: PgBackend, tmp_path_factory: pytest.TempPathFactory) -> None:
    d = tmp_path_factory.mktemp("safety-error")
    with GatewayProcess(d, upstreams_for(pg), extra_yaml="masking:\n  safety_net: error\n") as g:
        with psycopg.connect(g.dsn("payments"), password=g.token(), autocommit=True) as c:
            assert c.execute("select 'no card here', 1234567890123").fetchone() == (
                "no card here", 1234567890123)
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
                c.execute("select holder, pan from cards").fetchall()
            no_pan(str(e.value))
            assert "safety_net: error" in str(e.value)
            assert c.closed or c.info.status == psycopg.pq.ConnStatus.BAD
        with psycopg.connect(g.dsn("payments"), password=g.token(), autocommit=True) as c:
            assert c.execute("select 1").fetchone() == (1,)  # other sessions go on
        assert any(r.get("event") == "session.safety_net_stop" for r in g.logs)


def test_binary_copy_of_a_masked_non_text_column_is_refused(gw: GatewayProcess) -> None:
    with connect(gw) as c, c.cursor() as cur:
        # text COPY of the same column is masked (the value is text there)
        with cur.copy("copy (select first6 from mask_methods) to stdout (format binary)") as cp:
            assert b"411111******1111" in b"".join(bytes(x) for x in cp)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="binary COPY"), \
                cur.copy("copy mask_numeric (first6) to stdout (format binary)") as cp:
            list(cp)
