"""PostgreSQL describes the row a constraint rejected, or the key it collided with, in
the error's DETAIL ("Failing row contains (...)", "Key (id)=(1) ...") when the session
may read those columns, as the gateway's upstream login may: a masked column's raw value
with it. A write the policy allows on a table with a masked column must not be able to
show it that way: the gateway withholds the DETAIL of integrity-constraint violations
(gateway/masking/error_rows.py). Raw protocol, against a policy that allows everything
and masks cards.holder (a name: the PAN safety net would not catch it)."""

from __future__ import annotations

import pytest
from rawclient import Message, RawClient
from test_prepared_names import RAW, gw  # noqa: F401  (the masking gateway)

from gateway.devtools.harness import GatewayProcess
from gateway.masking.error_rows import WITHHELD, withhold_row_values
from gateway.wire import backend as be
from gateway.wire import frontend as fe

WRITES = {
    # "Failing row contains (null, Alice Martin, ...)": every column of the row
    "not null": ("update cards set id = null where id = 1", "23502"),
    "not null, returning": ("update cards set id = null where id = 1 returning id", "23502"),
    # "Key (id)=(2) already exists."
    "unique": ("update cards set id = 2 where id = 1", "23505"),
    # "Key (id)=(1) is still referenced from table ..."
    "still referenced": ("delete from cards where id = 1", "23503"),
}


def _error(gw: GatewayProcess, messages: list[bytes]) -> Message:  # noqa: F811
    """The one error `messages` get, inside a transaction rolled back after."""
    with RawClient(gw) as client:
        client.login(gw.token())
        client.send(fe.Query("begin").encode())
        client.read_until(b"Z")
        client.send(b"".join(messages))
        got = client.read_until(b"Z")
        client.send(fe.Query("rollback").encode())
        assert client.read_until(b"Z")[-1].body == b"I"
    assert got and got[-1].type == b"Z", got
    assert RAW not in b"".join(m.body for m in got), got
    (error,) = [m for m in got if m.type == b"E"]
    return error


def test_a_check_option_violation_never_shows_its_row(gw: GatewayProcess) -> None:  # noqa: F811
    """A view's WITH CHECK OPTION (44000) shows the base table's whole row in its DETAIL.
    Found by an adversarial probe."""
    with RawClient(gw) as client:
        client.login(gw.token())
        client.send(fe.Query("begin").encode())
        client.read_until(b"Z")
        client.send(fe.Query("create temp view ert_wco as select id from cards where "
                             "id < 100 with check option").encode())
        client.read_until(b"Z")
        client.send(fe.Query("update ert_wco set id = 200 where id = 1").encode())
        got = client.read_until(b"Z")
        client.send(fe.Query("rollback").encode())
        client.read_until(b"Z")
    (error,) = [m for m in got if m.type == b"E"]
    assert error.fields()["C"] == "44000" and error.fields()["D"] == WITHHELD, got
    assert RAW not in error.body


@pytest.mark.parametrize("protocol", ["simple", "extended"])
@pytest.mark.parametrize("case", list(WRITES))
def test_a_rejected_row_never_shows_its_values(gw: GatewayProcess, case: str,  # noqa: F811
                                               protocol: str) -> None:
    sql, code = WRITES[case]
    if protocol == "simple":
        messages = [fe.Query(sql).encode()]
    else:
        messages = [fe.Parse("", sql, ()).encode(), fe.Bind("", "", (), (), ()).encode(),
                    fe.Execute("", 0).encode(), fe.Sync().encode()]
    fields = _error(gw, messages).fields()
    assert fields["C"] == code, fields
    assert fields["D"] == WITHHELD, fields
    assert fields["t"] == "cards" or fields["t"] == "transactions", fields  # which rule


def test_other_errors_keep_their_detail() -> None:
    body = be.ErrorResponse.build("42P01", "relation does not exist",
                                  detail="C23 D in the text").encode()[5:]
    assert withhold_row_values(body) is None
    no_detail = be.ErrorResponse.build("23505", "duplicate key").encode()[5:]
    assert withhold_row_values(no_detail) is None


def test_a_constraint_error_keeps_everything_but_its_values() -> None:
    error = be.ErrorResponse({"S": "ERROR", "V": "ERROR", "C": "23505",
                              "M": 'duplicate key value violates unique constraint "k"',
                              "D": "Key (holder)=(Alice Martin) already exists.",
                              "s": "public", "t": "cards", "n": "k"})
    out = withhold_row_values(error.encode()[5:])
    assert out is not None
    msg = be.decode_backend(out[0], out[5:])
    assert isinstance(msg, be.ErrorResponse)
    assert dict(msg.fields) == {**error.fields, "D": WITHHELD}


def test_a_malformed_constraint_error_becomes_the_gateway_s_own() -> None:
    body = be.ErrorResponse.build("23505", "dup", detail="Key (h)=(Alice Martin)").encode()[5:]
    for bad in (body[:-1], body + b"DAlice Martin\x00\x00", body[:-2]):
        out = withhold_row_values(bad)
        assert out is not None and RAW not in out
        msg = be.decode_backend(out[0], out[5:])
        assert isinstance(msg, be.ErrorResponse) and msg.code == "XX000"
