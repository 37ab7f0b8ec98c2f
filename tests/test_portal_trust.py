"""A protocol portal means to the gateway what it means to the server. PostgreSQL keeps a
portal after its prepared statement is closed; it keeps the portal a name had when a
Bind or Close of the name fails or is skipped (a name in use, no such statement, an
error ahead of it), and a savepoint rolled back to keeps the transaction usable; SQL
cursors and protocol portals share one namespace. In none of these may a portal's rows
go out unmasked. Raw protocol, against a policy that allows everything and masks
cards.holder (a name: the PAN safety net would not catch it)."""

from __future__ import annotations

import pytest
from rawclient import RawClient
from test_prepared_names import HOLDER, RAW, gw, run  # noqa: F401  (the masking gateway)

from gateway.devtools.harness import GatewayProcess
from gateway.wire import frontend as fe

MASKED = b"[REDACTED]"
ALL = "select holder from cards order by id"
OTHERS = (b"Bob Chen", b"Carol Diaz", b"Dan Okafor", b"Eve Novak")


def q(sql: str) -> bytes:
    return fe.Query(sql).encode()


def bound(statement: str, portal: str, sql: str = HOLDER) -> list[bytes]:
    return [fe.Parse(statement, sql, ()).encode(), fe.Bind(portal, statement, (), (), ()).encode(),
            fe.Sync().encode()]


def execute(portal: str) -> list[bytes]:
    return [fe.Execute(portal, 0).encode(), fe.Sync().encode()]


def _clean(out: list[tuple[str, bytes]]) -> bytes:
    got = b"".join(body for _, body in out)
    assert RAW not in got and not any(name in got for name in OTHERS), out
    return got


# Each: the batches after "begin", one answered before the next is sent.
UNDONE = {
    "a Bind of a name in use": [
        bound("s10", "p10"), [q("savepoint a")],
        bound("s11", "p10", "select 'harmless'"),  # 42P03: p10 keeps its portal
        [q("rollback to savepoint a")], execute("p10")],
    "a Bind of no statement": [
        bound("s12", "p12"), [q("savepoint a")],
        [fe.Bind("p12", "nosuch", (), (), ()).encode(), fe.Sync().encode()],  # 26000
        [q("rollback to savepoint a")], execute("p12")],
    "a Close skipped behind an error": [
        bound("s14", "p14"), [q("savepoint a")],
        [fe.Describe("S", "nosuch").encode(), fe.Close("P", "p14").encode(), fe.Sync().encode()],
        [q("rollback to savepoint a")], execute("p14")],
    "read in pieces around a failed Bind": [
        [fe.Parse("s15", ALL, ()).encode(), fe.Bind("p15", "s15", (), (), ()).encode(),
         fe.Execute("p15", 1).encode(), fe.Sync().encode()],
        [q("savepoint a")],
        [fe.Bind("p15", "nosuch", (), (), ()).encode(), fe.Sync().encode()],
        [q("rollback to savepoint a")], execute("p15")],
    "the statement closed": [
        [*bound("s16", "p16")[:2], fe.Close("S", "s16").encode(), fe.Sync().encode()],
        execute("p16")],
}


@pytest.mark.parametrize("case", list(UNDONE))
def test_a_portal_the_server_kept_is_masked(gw: GatewayProcess, case: str) -> None:  # noqa: F811
    out = run(gw, [q("begin")], *UNDONE[case], [q("commit")])
    got = _clean(out)
    assert MASKED in got, out


def test_a_portal_outlives_its_closed_statement_outside_a_transaction(
        gw: GatewayProcess) -> None:  # noqa: F811
    """No error at all: a Flush keeps the implicit transaction, and so the portal."""
    for tagged_query_too in (False, True):
        with RawClient(gw) as c:
            c.login(gw.token())
            c.send(fe.Parse("", HOLDER, ()).encode() + fe.Bind("p17", "", (), (), ()).encode()
                   + fe.Close("S", "").encode() + fe.Flush().encode())
            got = c.read_until(b"3")
            c.send(b"".join(execute("p17")) + (q(HOLDER) if tagged_query_too else b""))
            got += c.read_until(b"Z")
            if tagged_query_too:
                got += c.read_until(b"Z")
        rows = [m.body for m in got if m.type == b"D"]
        assert rows and all(MASKED in r and RAW not in r for r in rows), got


def test_a_pipelined_execute_of_a_portal_whose_bind_failed_ends_the_session(
        gw: GatewayProcess) -> None:  # noqa: F811
    """Sent before the server answered a failing Bind of its masked portal's name in an
    earlier run, an Execute of the name would run the old portal as the new one: the
    gateway cannot know which until the answer, and then ends the session before any of
    its rows go out."""
    with RawClient(gw) as c:
        c.login(gw.token())
        c.send(q("begin") + b"".join(bound("s20", "p20")) + q("savepoint a"))
        for _ in range(3):
            c.read_until(b"Z")
        c.send(b"".join([*bound("s21", "p20", "select 'harmless'"), q("rollback to savepoint a"),
                         *execute("p20")]))
        got = c.read_until(b"Z") + c.read_until(b"Z") + c.read_until(b"Z")
    # (what the server answered before the Execute's rows, the gateway passes on as far
    # as it had when they came, in the same read or not: nothing, when the whole answer
    # came in one read)
    types = [m.type for m in got]
    assert types[-1] == b"E" and got[-1].fields()["C"] == "XX000", got
    assert b"".join(types[:-1]) in (b"", b"1", b"1E", b"1EZ", b"1EZC", b"1EZCZ"), got
    assert RAW not in b"".join(m.body for m in got), got


SHARED = {
    # a SQL cursor run as a protocol portal: its masks are FETCH's
    "Execute of a cursor WITH HOLD": [
        [q("declare c1 cursor with hold for " + HOLDER)], execute("c1"), [q("close c1")]],
    "Execute of a cursor in a transaction": [
        [q("begin")], [q("declare c2 cursor for " + HOLDER)],
        [fe.Describe("P", "c2").encode(), *execute("c2")], [q("commit")]],
    # a protocol portal read with SQL FETCH: its masks are its Execute's
    "FETCH from a portal": [
        [q("begin")], bound("s9", "p9"), [q("fetch all from p9")], [q("commit")]],
    "MOVE in a portal, then Execute": [
        [q("begin")], bound("s8", "p8", ALL), [q("move 1 in p8")], execute("p8"),
        [q("commit")]],
}


@pytest.mark.parametrize("case", list(SHARED))
def test_cursors_and_portals_are_read_only_their_own_way(gw: GatewayProcess,  # noqa: F811
                                                         case: str) -> None:
    """SQL cursors and protocol portals share one namespace at the server: each is read
    the way it was made, or refused."""
    out = run(gw, *SHARED[case])
    _clean(out)
    refused = [body for t, body in out if t == "E"]
    assert refused and b"C42501" in refused[0], out  # (then 25P02: the transaction failed)
    if case.startswith("Execute"):
        assert b"read it with FETCH" in refused[0]
    else:
        assert b"execute it" in refused[0]


def test_a_cursor_is_still_fetched_and_a_portal_executed(gw: GatewayProcess) -> None:  # noqa: F811
    out = run(gw, [q("begin")], [q("declare c3 cursor for " + HOLDER)], [q("fetch all from c3")],
              bound("s7", "p7"), execute("p7"), [q("commit")])
    got = _clean(out)
    assert got.count(MASKED) == 2 and not [t for t, _ in out if t == "E"], out
