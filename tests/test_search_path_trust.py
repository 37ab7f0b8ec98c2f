"""The gateway's idea of the session's search_path is the server's. The gateway resolves
unqualified names with it, and a policy masks what those names turn out to be. A SET the
gateway allowed may not run (an error ahead of it in its string or run, a transaction
rolled back), and a function may set the path unseen (set_config, a user function). If
the gateway then resolved `cards` along a path the server is not on, the policy would
not see public.cards and its masked column would go out raw. Raw protocol, against a
policy that masks cards.holder (a name: the PAN safety net would not catch it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PgBackend
from rawclient import Message, RawClient
from test_decision_reuse import direct_gate
from test_prepared_names import HOLDER, RAW, gw  # noqa: F401  (the masking gateway)

from gateway.devtools.harness import GatewayProcess
from gateway.wire import frontend as fe

MASKED = b"[REDACTED]"


@pytest.fixture(scope="module")
def setter(pg: PgBackend) -> Iterator[None]:
    """A user function that sets search_path, as any application function may."""
    pg.server.psql("CREATE OR REPLACE FUNCTION public.path_to(p text) RETURNS text "
                   "LANGUAGE sql AS $$ SELECT set_config('search_path', p, false) $$",
                   dbname="payments")
    yield
    pg.server.psql("DROP FUNCTION IF EXISTS public.path_to(text)", dbname="payments")


def _q(sql: str) -> bytes:
    return fe.Query(sql).encode()


def _holder_rows(gw: GatewayProcess, first: list[bytes], *, together: bool,  # noqa: F811
                 setup: str | None = None) -> list[bytes]:
    """The rows of HOLDER sent after `first` (its answers awaited, or not: `together`),
    in a session whose search_path `setup` set (answered) before."""
    return [m.body for m in _holder_answer(gw, first, together=together, setup=setup)
            if m.type == b"D"]


def _holder_answer(gw: GatewayProcess, first: list[bytes], *, together: bool,  # noqa: F811
                   setup: str | None = None) -> list[Message]:
    """_holder_rows' HOLDER answer, every message of it."""
    with RawClient(gw) as client:
        client.login(gw.token())
        if setup is not None:
            client.send(_q(setup))
            assert client.read_until(b"Z")[-1].type == b"Z"
        replies = sum(1 for m in first if m[:1] in (b"Q", b"S"))
        if together:
            client.send(b"".join(first) + _q(HOLDER))
            answers = [client.read_until(b"Z") for _ in range(replies + 1)]
        else:
            client.send(b"".join(first))
            answers = [client.read_until(b"Z") for _ in range(replies)]
            client.send(_q(HOLDER))
            answers.append(client.read_until(b"Z"))
        last = answers[-1]
        assert last and last[-1].type == b"Z", last
        return last


SKIPPED_SETS = {
    "error ahead in the string": [_q("select 1/0; set search_path = nosuch")],
    "rolled back": [_q("begin; set search_path = nosuch; rollback")],
    "set local, committed": [_q("begin; set local search_path = nosuch; commit")],
    "error ahead in the run": [fe.Describe("S", "nosuch").encode(),
                               fe.Parse("", "set search_path = nosuch", ()).encode(),
                               fe.Bind("", "", (), (), ()).encode(),
                               fe.Execute("", 0).encode(), fe.Sync().encode()],
}


@pytest.mark.parametrize("together", [False, True], ids=["answered", "pipelined"])
@pytest.mark.parametrize("case", list(SKIPPED_SETS))
def test_a_set_the_server_did_not_keep_leaves_the_column_masked(
        gw: GatewayProcess, case: str, together: bool) -> None:  # noqa: F811
    got = _holder_rows(gw, SKIPPED_SETS[case], together=together)
    assert got and all(MASKED in r and RAW not in r for r in got), got


UNSEEN_SETS = {
    "set_config": "select set_config('search_path', 'public', false)",
    "a user function": "select public.path_to('public')",
    "a DO block": "do $$ begin perform set_config('search_path', 'public', false); end $$",
}


@pytest.mark.parametrize("together", [False, True], ids=["answered", "pipelined"])
@pytest.mark.parametrize("case", list(UNSEEN_SETS))
def test_a_path_set_unseen_leaves_the_column_masked(
        gw: GatewayProcess, setter: None, case: str, together: bool) -> None:  # noqa: F811
    """The session is on a path without `cards`; the statement puts it back on public
    without a SET the gateway could read."""
    answer = _holder_answer(gw, [_q(UNSEEN_SETS[case])], together=together,
                            setup="set search_path = nosuch")
    got = [m.body for m in answer if m.type == b"D"]
    if case == "a DO block" and together:
        # (a DO block may change the schema too, unseen: until it is answered, reads
        # are refused; see test_session_trust)
        assert [m.type for m in answer] == [b"E", b"Z"], answer
        assert answer[0].fields()["C"] == "42501" and RAW not in answer[0].body
        return
    assert got and all(MASKED in r and RAW not in r for r in got), got


def test_a_path_set_unseen_earlier_in_the_same_string_leaves_the_column_masked(
        gw: GatewayProcess, setter: None) -> None:  # noqa: F811
    with RawClient(gw) as client:
        client.login(gw.token())
        client.send(_q("set search_path = nosuch"))
        client.read_until(b"Z")
        client.send(_q(f"select public.path_to('public'); {HOLDER}"))
        got = [m.body for m in client.read_until(b"Z") if m.type == b"D"]
    assert len(got) == 2 and MASKED in got[1] and RAW not in got[1], got


def test_a_set_that_ran_is_followed_and_settles(gw: GatewayProcess) -> None:  # noqa: F811
    """The ordinary case still resolves as the server does, along one path once the
    server reported it: a name in another schema is not reported any more."""
    with RawClient(gw) as client:
        client.login(gw.token())
        client.send(_q("set search_path = nosuch"))
        client.read_until(b"Z")
        client.send(_q(HOLDER))
        answers = client.read_until(b"Z")
        assert [m.type for m in answers] == [b"E", b"Z"]  # cards is not on that path
        assert b"42P01" in answers[0].body
        client.send(_q("set search_path = public"))
        client.read_until(b"Z")
        client.send(_q(HOLDER))
        got = [m.body for m in client.read_until(b"Z") if m.type == b"D"]
    assert got and MASKED in got[0] and RAW not in got[0]


def test_a_set_in_a_run_without_its_sync_yet_is_not_settled_away(
        gw: GatewayProcess) -> None:  # noqa: F811
    """A ReadyForQuery for an earlier Query arrives while a run that SETs the path has no
    Sync yet: the server has run the SET, but reports it only at that Sync. The gateway
    must not take the report it has for where the server is."""
    with RawClient(gw) as client:
        client.login(gw.token())
        client.send(_q("set search_path = nosuch"))
        client.read_until(b"Z")
        client.send(_q("select 1") + fe.Parse("", "set search_path = public", ()).encode()
                    + fe.Bind("", "", (), (), ()).encode() + fe.Execute("", 0).encode())
        assert client.read_until(b"Z")[-1].type == b"Z"  # select 1's
        client.send(fe.Parse("", HOLDER, ()).encode() + fe.Bind("", "", (), (), ()).encode()
                    + fe.Execute("", 0).encode() + fe.Sync().encode())
        got = [m.body for m in client.read_until(b"Z") if m.type == b"D"]
    assert got and MASKED in got[0] and RAW not in got[0], got


@pytest.fixture()
def other_cards(gw: GatewayProcess, pg: PgBackend) -> Iterator[None]:  # noqa: F811
    """Another schema with a `cards` table (nothing masked in it), known to the gateway."""
    pg.server.psql("CREATE SCHEMA IF NOT EXISTS spt_alt; "
                   "CREATE TABLE IF NOT EXISTS spt_alt.cards (id int, holder text); "
                   "INSERT INTO spt_alt.cards VALUES (1, 'nobody'); "
                   "GRANT USAGE ON SCHEMA spt_alt TO PUBLIC; "
                   "GRANT SELECT ON spt_alt.cards TO PUBLIC", dbname="payments")
    with RawClient(gw) as client:  # DDL through the gateway refreshes its catalog
        client.login(gw.token())
        client.send(_q("create temp table spt_refresh (x int)"))
        client.read_until(b"Z")
    yield
    pg.server.psql("DROP SCHEMA spt_alt CASCADE", dbname="payments")


def test_a_prepared_statement_is_not_run_under_another_search_path(
        gw: GatewayProcess, other_cards: None) -> None:  # noqa: F811
    """PostgreSQL re-plans a prepared statement under the search_path of the moment. One
    decided along spt_alt (cards: nothing masked) would read public.cards after a SET:
    the Bind is refused; prepared again, it is decided along public and masked."""
    bind = [fe.Bind("", "s1", (), (), ()).encode(), fe.Execute("", 0).encode(),
            fe.Sync().encode()]
    with RawClient(gw) as client:
        client.login(gw.token())
        for batch in ([_q("set search_path = spt_alt")],
                      [fe.Parse("s1", HOLDER, ()).encode(), fe.Sync().encode()], bind):
            client.send(b"".join(batch))
            answers = client.read_until(b"Z")
        assert [m.body[-6:] for m in answers if m.type == b"D"] == [b"nobody"]
        client.send(_q("set search_path = public"))
        client.read_until(b"Z")
        client.send(b"".join(bind))
        answers = client.read_until(b"Z")
        assert [m.type for m in answers] == [b"E", b"Z"]
        assert "decided under another search_path" in answers[0].fields()["M"]
        client.send(_q("set search_path = spt_alt"))  # back where it was decided: fine
        client.read_until(b"Z")
        client.send(b"".join(bind))
        assert [m.type for m in client.read_until(b"Z")] == [b"2", b"D", b"C", b"Z"]
        client.send(_q("set search_path = public"))
        client.read_until(b"Z")
        client.send(fe.Close("S", "s1").encode()
                    + fe.Parse("s1", HOLDER, ()).encode() + b"".join(bind))
        got = [m.body for m in client.read_until(b"Z") if m.type == b"D"]
    assert got and MASKED in got[0] and RAW not in got[0], got


def test_the_startup_packet_s_search_path_is_where_the_session_starts(
        gw: GatewayProcess, pg: PgBackend, other_cards: None, tmp_path: Path) -> None:  # noqa: F811
    """A client may set search_path in its startup packet, and the gateway passes it on.
    Before PostgreSQL 18 the server never reports it: the gate takes it from the packet
    (a gate told nothing else resolves `cards` along it), and then the server's report,
    where there is one, as here."""
    gate, catalog, _ = direct_gate(pg, tmp_path)
    del gw
    gate.startup({"Search_Path": "spt_alt, public"})
    (info,) = gate._analyze(HOLDER, "simple", catalog)[0].infos
    assert {(r.schema, r.name) for r in info.relations} == {("spt_alt", "cards")}
    gate.startup({"search_path": '"unclosed'})  # one the gateway cannot read: any schema
    (info,) = gate._analyze(HOLDER, "simple", catalog)[0].infos
    assert {(r.schema, r.name) for r in info.relations} >= {("spt_alt", "cards"),
                                                           ("public", "cards")}


def test_a_startup_search_path_reaches_the_server_and_the_gate_alike(
        gw: GatewayProcess, other_cards: None) -> None:  # noqa: F811
    for path, expect in (("spt_alt", b"nobody"), ("public", MASKED)):
        with RawClient(gw) as client:
            client.startup({"user": "ci-bot", "database": "payments", "search_path": path})
            client.read_until(b"R")
            client.password(gw.token())
            assert client.read_until(b"Z")[-1].type == b"Z"
            client.send(_q(HOLDER))
            got = [m.body for m in client.read_until(b"Z") if m.type == b"D"]
        assert got and expect in got[0] and RAW not in got[0], (path, got)
