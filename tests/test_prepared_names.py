"""The gateway's idea of a prepared statement is the server's. A client names statements
and the server may not carry out a Parse or a Close of one: it fails (a Parse of a name
that exists), or is skipped behind an earlier error up to the Sync. If the gateway then
followed the rows of the statement it was told about rather than the one the server
runs, a masked column would go out raw. Raw protocol, against a policy that masks
cards.holder (a name: not a card number, so the PAN safety net would not catch it)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PgBackend, upstreams_for
from rawclient import RawClient

from gateway.devtools.harness import GatewayProcess
from gateway.wire import frontend as fe

MASKING = Path(__file__).resolve().parent / "policies" / "masking"
HOLDER = "select holder from cards where id = 1"
RAW = b"Alice Martin"


# two tables, the second's holder masked: a rename puts it under the first's name
REPLAN_SETUP = """
DROP TABLE IF EXISTS replan_secret, replan_plain, replan_plain_old;
CREATE TABLE replan_secret (id int, holder text);
INSERT INTO replan_secret VALUES (1, 'REPLAN-SECRET-HOLDER');
CREATE TABLE replan_plain (id int, holder text);
INSERT INTO replan_plain VALUES (1, 'plain');
"""


@pytest.fixture(scope="module")
def gw(pg: PgBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    pg.server.psql(REPLAN_SETUP, dbname="payments", user=pg.service.name)
    d = tmp_path_factory.mktemp("prepared-names")
    policy = d / "policy"
    policy.mkdir()
    shutil.copy(MASKING / "masking.rego", policy)  # allows all, masks what data names
    (policy / "data.json").write_text(json.dumps({"pgwarden": {
        "classification": {"public.cards.holder": ["pii"],
                           "public.replan_secret.holder": ["pii"]},
        "methods": {"public.cards.holder": "redact",
                    "public.replan_secret.holder": "redact"}}}))
    with GatewayProcess(d / "gw", upstreams_for(pg), policy_dir=policy) as g:
        yield g


def run(gw: GatewayProcess, *batches: list[bytes]) -> list[tuple[str, bytes]]:
    """Each batch sent once the one before is answered (to its last ReadyForQuery);
    what came back: (type, body) of the rows and errors, and an end of the session."""
    out: list[tuple[str, bytes]] = []
    with RawClient(gw) as client:
        client.login(gw.token())
        for batch in batches:
            client.send(b"".join(batch))
            for _ in range(sum(1 for m in batch if m[:1] in (b"S", b"Q"))):
                msgs = client.read_until(b"Z")
                out += [(m.type.decode(), m.body) for m in msgs if m.type in (b"D", b"E")]
                if not msgs or msgs[-1].type != b"Z":
                    return [*out, ("closed", b"")]
    return out


def rows(out: list[tuple[str, bytes]]) -> list[bytes]:
    return [body for t, body in out if t == "D"]


def errors(out: list[tuple[str, bytes]]) -> list[str]:
    return [dict((p[:1].decode(), p[1:].decode()) for p in body.split(b"\0") if p)["C"]
            for t, body in out if t == "E"]


def test_a_parse_of_a_name_that_exists_leaves_the_first_statement_masked(
        gw: GatewayProcess) -> None:
    out = run(gw, [fe.Parse("s1", HOLDER, ()).encode(), fe.Sync().encode()],
              [fe.Parse("s1", "select 'harmless'", ()).encode(), fe.Sync().encode()],
              [fe.Bind("", "s1", (), (), ()).encode(), fe.Execute("", 0).encode(),
               fe.Sync().encode()])
    assert errors(out) == ["42P05"]  # prepared statement "s1" already exists
    assert RAW not in b"".join(rows(out)) and rows(out), out


def test_a_parse_skipped_behind_an_error_leaves_the_unnamed_statement_masked(
        gw: GatewayProcess) -> None:
    out = run(gw, [fe.Parse("", HOLDER, ()).encode(), fe.Sync().encode()],
              [fe.Describe("S", "nosuch").encode(),  # an error: the rest is skipped
               fe.Parse("", "select 'harmless'", ()).encode(), fe.Sync().encode()],
              [fe.Bind("", "", (), (), ()).encode(), fe.Execute("", 0).encode(),
               fe.Sync().encode()])
    assert errors(out) == ["26000"]
    assert RAW not in b"".join(rows(out)) and rows(out), out


def test_a_close_skipped_behind_an_error_leaves_the_statement_masked(
        gw: GatewayProcess) -> None:
    out = run(gw, [fe.Parse("s2", HOLDER, ()).encode(), fe.Sync().encode()],
              [fe.Describe("S", "nosuch").encode(), fe.Close("S", "s2").encode(),
               fe.Sync().encode()],
              [fe.Bind("", "s2", (), (), ()).encode(), fe.Execute("", 0).encode(),
               fe.Sync().encode()])
    assert errors(out) == ["26000"]
    assert RAW not in b"".join(rows(out)) and rows(out), out


def test_a_bind_sent_before_the_error_came_back_ends_the_session_unanswered(
        gw: GatewayProcess) -> None:
    """Pipelined: the Bind went out before the gateway learnt that the Parse ahead of it
    was skipped, so its rows were to be followed for the wrong statement. The server's
    BindComplete for it ends the session, before any row."""
    out = run(gw, [fe.Parse("", HOLDER, ()).encode(), fe.Sync().encode()],
              [fe.Describe("S", "nosuch").encode(),
               fe.Parse("", "select 'harmless'", ()).encode(), fe.Sync().encode(),
               fe.Bind("", "", (), (), ()).encode(), fe.Execute("", 0).encode(),
               fe.Sync().encode()])
    assert RAW not in b"".join(body for _, body in out)
    assert out[-1] == ("closed", b"") and "XX000" in errors(out), out


def test_sql_prepare_of_a_name_in_use_is_refused(gw: GatewayProcess) -> None:
    """The server refuses it too; the gateway must not take the new text for what the
    name runs (EXECUTE is decided on it), also within one query string."""
    out = run(gw, [fe.Query(f"prepare q1 as {HOLDER}").encode()],
              [fe.Query("prepare q1 as select 'harmless'").encode()],
              [fe.Query("prepare q2 as select 1; prepare q2 as select 2").encode()],
              [fe.Query("execute q1").encode()])
    assert errors(out) == ["42P05", "42P05"]
    assert rows(out) and RAW not in b"".join(rows(out)), out


def test_a_sql_prepared_statement_is_run_with_execute_only(gw: GatewayProcess) -> None:
    """Its decision and masks come with EXECUTE; a Bind of it is refused, and so is an
    EXECUTE of a statement prepared over the protocol (its masks follow its Bind)."""
    out = run(gw, [fe.Query(f"prepare q3 as {HOLDER}").encode()],
              [fe.Bind("", "q3", (), (), ()).encode(), fe.Execute("", 0).encode(),
               fe.Sync().encode()],
              [fe.Describe("S", "q3").encode(), fe.Sync().encode()],
              [fe.Parse("q4", HOLDER, ()).encode(), fe.Sync().encode()],
              [fe.Query("execute q4").encode()],
              [fe.Query("execute q3").encode()])
    assert errors(out) == ["42501", "42501", "42501"], out
    assert rows(out) and RAW not in b"".join(rows(out)), out


def test_a_deallocate_the_server_skipped_leaves_no_way_to_the_statement(
        gw: GatewayProcess) -> None:
    """An error earlier in the query string: the server never runs the DEALLOCATE, while
    the gateway takes it as done. Neither EXECUTE nor a Bind of the name reaches the
    statement the server still holds."""
    out = run(gw, [fe.Query(f"prepare q6 as {HOLDER}").encode()],
              [fe.Query("select 1/0; deallocate q6").encode()],
              [fe.Query("execute q6").encode()],
              [fe.Bind("", "q6", (), (), ()).encode(), fe.Execute("", 0).encode(),
               fe.Sync().encode()])
    assert errors(out) == ["22012", "26000", "42501"], out
    assert RAW not in b"".join(rows(out)), out


CURSOR_REUSES = {
    "declare of a name in use": [
        "declare c cursor with hold for select 'harmless'::text"],
    "close skipped behind an error": [
        "select 1/0; close c", "declare c cursor with hold for select 'harmless'::text"],
    "close and declare skipped in one string": [
        "select 1/0; close c; declare c cursor with hold for select 'harmless'::text"],
    "close skipped, then a fetch": ["select 1/0; close c"],
}


@pytest.mark.parametrize("case", list(CURSOR_REUSES))
def test_a_cursor_the_server_kept_stays_masked(gw: GatewayProcess, case: str) -> None:
    """SQL cursors have names too: a DECLARE or CLOSE the server did not carry out leaves
    the name on the cursor it had (one WITH HOLD outlives its transaction), and a FETCH
    returns that cursor's rows, not those of the query the gateway last saw declared."""
    out = run(gw, [fe.Query("declare c cursor with hold for " + HOLDER).encode()],
              *[[fe.Query(q).encode()] for q in CURSOR_REUSES[case]],
              [fe.Query("fetch all from c").encode()], [fe.Query("close c").encode()])
    assert RAW not in b"".join(rows(out)), out
    fetched = rows(out)
    assert not fetched or all(b"[REDACTED]" in r for r in fetched), out


LONG = "s" * 63  # PostgreSQL's longest name (NAMEDATALEN - 1 bytes); it cuts longer ones


@pytest.mark.parametrize("batch", [
    [fe.Parse(LONG + "a", HOLDER, ()).encode(), fe.Sync().encode()],
    [fe.Parse("", HOLDER, ()).encode(),
     fe.Bind(LONG + "p", "", (), (), ()).encode(), fe.Sync().encode()],
    [fe.Parse("", HOLDER, ()).encode(), fe.Bind("", "", (), (), ()).encode(),
     fe.Execute(LONG + "p", 0).encode(), fe.Sync().encode()],
    [fe.Describe("S", LONG + "é").encode(), fe.Sync().encode()],
    [fe.Close("P", LONG + "p").encode(), fe.Sync().encode()],
], ids=["parse", "bind portal", "execute", "describe", "close"])
def test_a_name_longer_than_the_server_keeps_ends_the_session(
        gw: GatewayProcess, batch: list[bytes]) -> None:
    """Names past 63 bytes that share their first 63 are one name to the server. The
    gateway kept them apart: a Parse of one (refused by the server as a name that exists)
    went down as that one's statement, and a Bind of it then ran the other's, unmasked.
    Such names are refused before anything of the batch is forwarded."""
    out = run(gw, batch, [fe.Query(HOLDER).encode()])
    assert out[-1] == ("closed", b"") and errors(out) == ["42622"], out


def test_long_names_cannot_make_two_statements_one(gw: GatewayProcess) -> None:
    out = run(gw, [fe.Parse(LONG + "a", HOLDER, ()).encode(), fe.Sync().encode()],
              [fe.Parse(LONG + "b", "select 'harmless'", ()).encode(), fe.Sync().encode()],
              [fe.Bind("", LONG + "b", (), (), ()).encode(), fe.Execute("", 0).encode(),
               fe.Sync().encode()])
    assert RAW not in b"".join(body for _, body in out), out
    assert out == [("E", out[0][1]), ("closed", b"")] and errors(out) == ["42622"], out


def test_sql_names_are_cut_as_the_server_cuts_them(gw: GatewayProcess) -> None:
    """SQL identifiers are cut to 63 bytes by the parser, the gateway's as the server's:
    an EXECUTE of a longer name runs the statement PREPARE made under its first 63."""
    out = run(gw, [fe.Query(f"prepare {LONG}x as {HOLDER}").encode()],
              [fe.Query(f"execute {LONG}yy").encode()])
    assert rows(out) and RAW not in b"".join(rows(out)), out
    assert all(b"[REDACTED]" in r for r in rows(out)), out


def _cycles(name: str, queries: list[str]) -> list[list[bytes]]:
    """DECLARE name WITH HOLD over each query, each followed by its CLOSE."""
    out = []
    for q in queries:
        out += [[fe.Query(f"declare {name} cursor with hold for {q}").encode()],
                [fe.Query(f"close {name}").encode()]]
    return out


def test_a_cursor_name_declared_over_too_many_queries_is_refused(gw: GatewayProcess) -> None:
    """The gateway keeps every query a cursor name may still run at the server, up to a
    bound; past it FETCH and DECLARE of the name are refused (not forgotten: a FETCH would
    be masked as a query it no longer knows of). The same query again, with other
    constants, is one of them: a loop over one name goes on."""
    from gateway.sql.session_state import MAX_CURSOR_HISTORY

    same = [f"{HOLDER} and {i} = {i}" for i in range(MAX_CURSOR_HISTORY + 5)]
    out = run(gw, *_cycles("h", same), [fe.Query(f"declare h cursor with hold for {HOLDER}"
                                                 ).encode()],
              [fe.Query("fetch all from h").encode()])
    assert not errors(out) and rows(out), out
    assert all(b"[REDACTED]" in r for r in rows(out)), out
    other = [f"select holder as n{i} from cards"  # noqa: S608
             for i in range(MAX_CURSOR_HISTORY + 1)]
    out = run(gw, *_cycles("k", other), [fe.Query("fetch all from k").encode()],
              [fe.Query("declare k cursor with hold for select 1").encode()],
              [fe.Query(f"declare k2 cursor with hold for {HOLDER}").encode()],
              [fe.Query("fetch all from k2").encode()])
    assert errors(out) == ["54000", "54000"], out
    assert rows(out) and all(b"[REDACTED]" in r for r in rows(out)), out


OTHERS = (b"Bob Chen", b"Carol Diaz", b"Dan Okafor", b"Eve Novak")
SYNC = fe.Sync().encode()


def _q(sql: str) -> bytes:
    return fe.Query(sql).encode()


def bind_execute(statement: str) -> list[bytes]:
    return [fe.Bind("", statement, (), (), ()).encode(), fe.Execute("", 0).encode(), SYNC]


def _no_holder(out: list[tuple[str, bytes]]) -> None:
    got = b"".join(body for _, body in out)
    assert RAW not in got and not any(n in got for n in OTHERS), out


# A statement prepared over the protocol whose text reads a session object by name (FETCH
# from a SQL cursor, EXECUTE of a SQL PREPAREd statement) is decided at its Parse, against
# what the name meant then; PostgreSQL looks the name up again at every Bind. A cursor or
# SQL statement of the name redefined in between ran unmasked: its Bind is refused now.


def test_a_parsed_fetch_of_a_cursor_redeclared_over_a_masked_query_is_masked(
        gw: GatewayProcess) -> None:
    out = run(gw, [_q("begin")],
              [_q("declare k cursor for select 'x'::text from cards")],
              [fe.Parse("sf", "fetch all from k", ()).encode(), SYNC],  # decided: no mask
              [_q("close k")],
              [_q("declare k cursor for select holder from cards")],
              bind_execute("sf"),  # the server fetches from the new k
              [_q("commit")])
    _no_holder(out)
    assert "42501" in errors(out), out


def test_a_parsed_execute_of_a_sql_statement_prepared_again_is_masked(
        gw: GatewayProcess) -> None:
    out = run(gw, [_q("prepare qq as select 'x'::text from cards")],
              [fe.Parse("se", "execute qq", ()).encode(), SYNC],  # decided: no mask
              [_q("deallocate qq")],
              [_q("prepare qq as select holder from cards")],
              bind_execute("se"))  # the server runs the new qq
    _no_holder(out)
    assert "42501" in errors(out), out


def test_a_parsed_fetch_of_an_unchanged_cursor_still_runs(gw: GatewayProcess) -> None:
    out = run(gw, [_q("begin")], [_q("declare k cursor for select holder from cards")],
              [fe.Parse("sf2", "fetch 1 from k", ()).encode(), SYNC],
              bind_execute("sf2"), bind_execute("sf2"), [_q("commit")])
    assert not errors(out) and len(rows(out)) == 2, out
    assert all(b"[REDACTED]" in r for r in rows(out)), out


# A statement prepared over the protocol is decided at its Parse, against the catalog of
# that moment; PostgreSQL re-plans it when a relation it names changes. After a rename put
# a masked table under the name it read, its Bind ran over the masked rows, unmasked: a
# Bind of a statement reading a relation a schema change of the session touched since its
# Parse is refused now.
SECRET = b"REPLAN-SECRET-HOLDER"
READ_PLAIN = "select holder from replan_plain"


@pytest.mark.parametrize("again", [False, True], ids=["decided", "kept"])
def test_a_prepared_statement_replanned_onto_a_renamed_masked_table_is_refused(
        gw: GatewayProcess, again: bool) -> None:
    """`kept`: the same text parsed before, so that the second Parse is the kept allow."""
    first = [[fe.Parse("r0", READ_PLAIN, ()).encode(), SYNC]] if again else []
    out = run(gw, *first, [_q("begin")], [fe.Parse("r1", READ_PLAIN, ()).encode(), SYNC],
              [_q("alter table replan_plain rename to replan_plain_old")],
              [_q("alter table replan_secret rename to replan_plain")],
              bind_execute("r1"), [_q("rollback")])  # (the tables keep their names)
    assert SECRET not in b"".join(body for _, body in out), out
    assert "42501" in errors(out), out


def test_a_schema_change_elsewhere_leaves_a_prepared_statement_alone(
        gw: GatewayProcess) -> None:
    out = run(gw, [_q("begin")], [fe.Parse("r2", READ_PLAIN, ()).encode(), SYNC],
              [_q("create temp table replan_other (id int)")],
              bind_execute("r2"), [_q("rollback")])
    assert not errors(out) and rows(out) and b"plain" in rows(out)[0], out
