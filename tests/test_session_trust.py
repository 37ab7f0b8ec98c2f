"""What the gateway applies to its picture of the session when it allows a statement
(a cursor declared, a transaction ended, a statement prepared or deallocated, a setting
changed) may not happen at the server: the statement may be only parsed, skipped
behind an error, or refused, and pipelined statements are decided before any answer
comes back. No such gap may let a masked column out. Found by an adversarial probe.
Raw protocol, against a policy that allows everything and masks cards.holder (a name:
the PAN safety net would not catch it)."""

from __future__ import annotations

import pytest
from test_prepared_names import HOLDER, RAW, gw, run  # noqa: F401  (the masking gateway)

from gateway.devtools.harness import GatewayProcess
from gateway.wire import frontend as fe

MASKED = b"[REDACTED]"
HARMLESS = "select 'harmless'::text"
ONE = b"\x00\x01\x00\x00\x00\x011"  # the row of select 1
NAMES = (b"Alice Martin", b"Bob Chen", b"Carol Diaz", b"Dan Okafor", b"Eve Novak")


def q(sql: str) -> bytes:
    return fe.Query(sql).encode()


def parse_only(sql: str) -> list[bytes]:
    return [fe.Parse("", sql, ()).encode(), fe.Sync().encode()]


def skipped(sql: str) -> list[bytes]:
    """`sql` in an extended run the server skips (an error ahead of it)."""
    return [fe.Describe("S", "nosuch").encode(), fe.Parse("", sql, ()).encode(),
            fe.Bind("", "", (), (), ()).encode(), fe.Execute("", 0).encode(),
            fe.Sync().encode()]


def _clean(out: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    got = b"".join(body for _, body in out)
    assert not any(name in got for name in NAMES), out
    return out


def _masked_or_refused(out: list[tuple[str, bytes]]) -> None:
    _clean(out)
    rows = [body for t, body in out if t == "D" and body != ONE]
    errors = [body for t, body in out if t == "E"]
    assert (rows and all(MASKED in r for r in rows)) or any(b"C42501" in e for e in errors), out


# -- a cursor the gateway forgot while the server kept it -------------------------------

READ = {"Execute": [fe.Execute("c", 0).encode(), fe.Sync().encode()],
        "FETCH": [q("fetch all from c")]}
FORGOTTEN = {
    # the ReadyForQuery of `select 1` (idle) comes after the DECLARE was decided
    "declared behind an idle answer": [[q("select 1"), q("begin"),
                                        q("declare c cursor for " + HOLDER)]],
    "a COMMIT only parsed": [[q("begin")], [q("declare c cursor for " + HOLDER)],
                             parse_only("commit")],
    "a COMMIT skipped, then a savepoint rolled back to": [
        [q("begin")], [q("declare c cursor for " + HOLDER)], [q("savepoint a")],
        [q("select 1/0; commit")], [q("rollback to savepoint a")]],
}


@pytest.mark.parametrize("read", list(READ))
@pytest.mark.parametrize("case", list(FORGOTTEN))
def test_a_cursor_the_server_kept_is_not_forgotten(gw: GatewayProcess,  # noqa: F811
                                                   case: str, read: str) -> None:
    out = run(gw, *FORGOTTEN[case], READ[read], [q("rollback")])
    _masked_or_refused(out)


# -- a protocol portal named like a cursor the gateway remembers -----------------------

BOUND = [fe.Parse("s1", HOLDER, ()).encode(), fe.Bind("c", "s1", (), (), ()).encode(),
         fe.Sync().encode()]
REMEMBERED = {
    "a cursor closed before": [[q("begin")], [q(f"declare c cursor for {HARMLESS}")],
                               [q("close c")], BOUND],
    "a cursor WITH HOLD closed before": [[q(f"declare c cursor with hold for {HARMLESS}")],
                                         [q("close c")], [q("begin")], BOUND],
    "a DECLARE the server refused": [[q("begin")], BOUND, [q("savepoint a")],
                                     [q(f"declare c cursor for {HARMLESS}")],
                                     [q("rollback to savepoint a")]],
}


@pytest.mark.parametrize("case", list(REMEMBERED))
def test_fetch_of_a_portal_is_refused_whatever_cursors_the_name_had(
        gw: GatewayProcess, case: str) -> None:  # noqa: F811
    out = run(gw, *REMEMBERED[case], [q("fetch all from c")], [q("rollback")])
    _clean(out)
    errors = [body for t, body in out if t == "E" and b"execute it" in body]
    assert errors and b"C42501" in errors[0], out


# -- a SQL PREPARE'd name whose PREPARE or DEALLOCATE may not have run ------------------

def _prepared(name: str) -> dict[str, list[list[bytes]]]:
    again = [q(f"prepare {name} as {HARMLESS}")]
    return {
        "DEALLOCATE skipped": [[q(f"select 1/0; deallocate {name}")], again],
        "DEALLOCATE ALL skipped": [[q("select 1/0; deallocate all")], again],
        "DISCARD ALL skipped": [[q("select 1/0; discard all")], again],
        "all in one string": [[q(f"select 1/0; deallocate {name}; prepare {name} as "
                                 f"{HARMLESS}")]],
        "DEALLOCATE skipped in a run": [skipped(f"deallocate {name}"), again],
        "DEALLOCATE only parsed": [parse_only(f"deallocate {name}"), again],
        "PREPARE only parsed": [parse_only(f"prepare {name} as {HARMLESS}")],
        "PREPARE run over the protocol, refused": [[
            fe.Parse("", f"prepare {name} as {HARMLESS}", ()).encode(),
            fe.Bind("", "", (), (), ()).encode(), fe.Execute("", 0).encode(),
            fe.Sync().encode()]],
    }


@pytest.mark.parametrize("case", list(_prepared("x")))
def test_execute_never_runs_another_statement_than_the_one_decided(
        gw: GatewayProcess, case: str) -> None:  # noqa: F811
    name = "sp_" + "".join(c for c in case.lower() if c.isalnum())[:20]
    out = run(gw, [q(f"prepare {name} as {HOLDER}")], *_prepared(name)[case],
              [q(f"execute {name}")])
    _masked_or_refused(out)


def test_a_name_prepared_again_with_its_own_text_still_executes(gw: GatewayProcess  # noqa: F811
                                                                ) -> None:
    out = run(gw, [q(f"prepare same as {HOLDER}")], [q("deallocate same")],
              [q(f"prepare same as {HOLDER}")], [q("execute same")])
    rows = [body for t, body in _clean(out) if t == "D"]
    assert rows and all(MASKED in r for r in rows) and not [t for t, _ in out if t == "E"]


# -- settings that change how the server reads what follows -----------------------------

# standard_conforming_strings on (the gateway): two literals; off (the server): a
# literal, then holder from cards
TRICK = r"select 'a\' , ' , holder as h from cards -- '"


@pytest.mark.parametrize("setting", [
    "select set_config('standard_conforming_strings', 'off', false)",
    "select set_config('client_encoding', 'SJIS', false)",
])
def test_set_config_of_a_parsing_setting_is_refused(gw: GatewayProcess,  # noqa: F811
                                                    setting: str) -> None:
    out = run(gw, [q(setting), q(TRICK), fe.Parse("", TRICK, ()).encode(),
                   fe.Bind("", "", (), (), ()).encode(), fe.Execute("", 0).encode(),
                   fe.Sync().encode()])
    _clean(out)
    first = next(body for t, body in out if t == "E")
    assert b"C42501" in first and b"set_config()" in first, out


# -- schema changes the catalog cannot see yet ------------------------------------------

UNCOMMITTED = {
    "a column renamed": ["alter table cards rename column holder to zz_h",
                         "select zz_h from cards"],
    "a table renamed, another in its place": [
        "alter table cards rename to zz_cards", "create table cards (id int, holder text)",
        "select holder from zz_cards"],
    "two columns swapped": ["alter table cards rename column holder to zz_t",
                            "alter table cards rename column expiry to holder",
                            "alter table cards rename column zz_t to expiry",
                            "select expiry from cards"],
}


@pytest.mark.parametrize("pipelined", [False, True], ids=["answered", "pipelined"])
@pytest.mark.parametrize("case", list(UNCOMMITTED))
def test_a_schema_change_not_committed_yet_unmasks_nothing(
        gw: GatewayProcess, case: str, pipelined: bool) -> None:  # noqa: F811
    """The catalog is read over another connection and cannot see this transaction's DDL
    (nor any the server has not committed when the next statement is decided): a name it
    made is refused, and a column of a table it changed may be any of its columns."""
    steps = [q(sql) for sql in ["begin", *UNCOMMITTED[case]]]
    batches = [steps] if pipelined else [[m] for m in steps]
    out = run(gw, *batches, [q("rollback")])
    _masked_or_refused(out)


SWAPS = {
    # a table with nothing masked trades names with cards
    "two tables": ("create table sst_fake (id int, holder text)", [
        "alter table cards rename to sst_tmp", "alter table sst_fake rename to cards",
        "alter table sst_tmp rename to sst_fake"], "select holder from sst_fake",
        "drop table sst_fake"),
    # a schema with a cards of nothing masked trades names with public
    "two schemas": ("create schema sst_s; create table sst_s.cards (id int, holder text)", [
        "alter schema public rename to sst_tmp", "alter schema sst_s rename to public",
        "alter schema sst_tmp rename to sst_s"], "select holder from sst_s.cards",
        "drop schema sst_s cascade"),
}


@pytest.mark.parametrize("case", list(SWAPS))
def test_relations_swapped_by_a_schema_change_are_masked_or_refused(
        gw: GatewayProcess, case: str) -> None:  # noqa: F811
    """The decoy is committed (and so in the catalog) first; then, in one transaction,
    it and the real one trade names, and the decoy's new name is read."""
    before, swap, read, after = SWAPS[case]
    run(gw, [q(before)])
    try:
        out = run(gw, [q("begin")], *[[q(sql)] for sql in swap], [q(read)], [q("rollback")])
        _masked_or_refused(out)
    finally:
        run(gw, [q(after)])


def test_a_migration_in_one_transaction_still_runs(gw: GatewayProcess) -> None:  # noqa: F811
    """More schema change that reads nothing goes through; once committed, the catalog
    is read again and shows it."""
    out = run(gw, [q("begin")], [q("create table st_mig (id int)")],
              [q("alter table st_mig add column note text")],
              [q("alter table st_mig add constraint st_mig_note check (note <> '')")],
              [q("create index on st_mig (note)")], [q("commit")],
              [q("insert into st_mig values (1, 'x')")], [q("select note from st_mig")],
              [q("drop table st_mig")])
    assert not [body for t, body in out if t == "E"], out
    assert [body for t, body in out if t == "D"] == [b"\x00\x01\x00\x00\x00\x01x"], out
