"""Row values in integrity-constraint errors, withheld. Sans-IO.

PostgreSQL describes the row a constraint rejected, or the key it collided with, in the
error's DETAIL ("Failing row contains (1, Alice Martin, ...)", "Key (holder, expiry)=
(Alice Martin, 01/28) already exists.", "Key (id)=(1) is still referenced from table
...") whenever the session may read those columns, as the gateway's upstream login may.
They are the table's values, masked columns included: a write the policy allows on a
table with a masked column (`update cards set id = null`) would show them. The gateway
cannot tell which of them a policy would mask, so it withholds the DETAIL of every
integrity-constraint violation (class 23) and WITH CHECK OPTION violation (44000). The
message, and the constraint, table and column fields, still say which rule failed; none
of them holds a value.
"""

from __future__ import annotations

from gateway.wire.backend import ErrorResponse
from gateway.wire.codec import frame

__all__ = ["WITHHELD", "withhold_row_values"]

# integrity constraints (23), and a view's WITH CHECK OPTION (44000), which shows the
# base table's whole row
_ROW_CLASSES = (b"23", b"44")

WITHHELD = ("pgwarden withheld the values of this detail: they are a row's, which may "
            "hold masked columns")


def withhold_row_values(body: bytes) -> bytes | None:
    """The whole ErrorResponse message for `body` (its fields, no type or length) with
    its DETAIL replaced by :data:`WITHHELD`, when it is a class-23 error that has one;
    else None (forward it as it is). One that may be and is not a well-formed field list
    becomes an error of the gateway's own (a client might still read a DETAIL in it)."""
    if (b"C23" not in body and b"C44" not in body) \
            or (b"\x00D" not in body and not body.startswith(b"D")):
        return None  # (the usual error: no parse)
    fields: list[tuple[int, bytes]] = []
    i, n = 0, len(body)
    while i < n and body[i] != 0:
        end = body.find(b"\x00", i + 1)
        if end < 0:
            break
        fields.append((body[i], body[i + 1 : end]))
        i = end + 1
    if i != n - 1:
        return ErrorResponse.build("XX000", "the server sent an error message the gateway "
                                   "could not read").encode()
    code = next((v for t, v in fields if t == ord("C")), b"")
    if not code.startswith(_ROW_CLASSES) or not any(t == ord("D") for t, _ in fields):
        return None
    withheld = WITHHELD.encode()
    out = b"".join(bytes([t]) + (withheld if t == ord("D") else v) + b"\x00"
                   for t, v in fields) + b"\x00"
    return frame(b"E", out)
