"""The content safety net in the data path: no Luhn-valid PAN reaches a client.

The session gateway allows every statement (no masks), so anything that keeps a raw PAN
out of these outputs is the safety net alone.
"""

from __future__ import annotations

import asyncio
import io
import ssl

import asyncpg
import psycopg
import pytest

from gateway.devtools.harness import GatewayProcess

PAN = "4111111111111111"


def connect(gw: GatewayProcess, token: str, **kw: object) -> psycopg.Connection:
    return psycopg.connect(gw.dsn("payments"), password=token, **kw)


def test_selected_pan_is_masked_but_keeps_its_last_four(gateway: GatewayProcess,
                                                        token: str) -> None:
    with connect(gateway, token) as c:
        (value,) = c.execute("select pan from cards where id = 1").fetchone()
        assert PAN not in value and value.endswith("1111") and len(value) == len(PAN)
        rows = c.execute("select holder || ' ' || pan from cards order by id").fetchall()
        assert not any(p in repr(rows) for p in (PAN, "5555555555554444", "378282246310005"))
        with c.cursor(binary=True) as cur:
            (blob,) = cur.execute("select pan from cards where id = 2").fetchone()
            assert "5555555555554444" not in blob and blob.endswith("4444")


def test_pan_in_an_error_detail_is_masked(gateway: GatewayProcess, token: str) -> None:
    """(A constraint's DETAIL, which shows row values, is withheld whole: see
    tests/test_error_row_trust.py. Any other error's goes through the net.)"""
    with connect(gateway, token, autocommit=True) as c:
        with pytest.raises(psycopg.errors.RaiseException) as e:
            c.execute(f"do $$ begin raise exception 'declined' using detail = 'card {PAN}'; "
                      "end $$")
        detail = e.value.diag.message_detail or ""
        assert detail.startswith("card ") and PAN not in detail and detail.endswith("1111")


def test_pan_in_notices_and_notifications_is_masked(gateway: GatewayProcess,
                                                    token: str) -> None:
    with connect(gateway, token, autocommit=True) as a, connect(gateway, token,
                                                                autocommit=True) as b:
        notices: list[str] = []
        a.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        a.execute("do $$ begin raise notice 'card 4111-1111-1111-1111 declined'; end $$")
        assert notices and "4111-1111-1111-1111" not in notices[0]
        assert notices[0].endswith("1111 declined")
        a.execute("listen cards")
        b.execute("select pg_notify('cards', 'pan=5555 5555 5555 4444')")
        got = list(a.notifies(timeout=5, stop_after=1))
        assert got and "5555 5555 5555 4444" not in got[0].payload
        assert got[0].payload.endswith("4444")


def test_copy_out_is_masked(gateway: GatewayProcess, token: str) -> None:
    with connect(gateway, token) as c:
        buf = io.BytesIO()
        with c.cursor().copy("copy (select id, pan from cards order by id) to stdout") as cp:
            for chunk in cp:
                buf.write(chunk)
        out = buf.getvalue().decode()
        assert out.count("\n") == 5
        assert PAN not in out and "6011111111111117" not in out


def test_asyncpg_binary_results_are_masked(gateway: GatewayProcess, token: str) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE

    async def main() -> None:
        c = await asyncpg.connect(host="127.0.0.1", port=gateway.port, user="ci-bot",
                                  database="payments", password=token, ssl=ctx)
        try:
            rows = await c.fetch("select id, pan, cvv from cards order by id")
            assert len(rows) == 5
            assert all(r["pan"][-4:].isdigit() and "*" in r["pan"] for r in rows)
            assert await c.fetchval("select 7") == 7  # the session is still in sync
        finally:
            await c.close()

    asyncio.run(main())


def test_numbers_that_are_not_pans_pass_untouched(gateway: GatewayProcess,
                                                  token: str) -> None:
    with connect(gateway, token) as c:
        assert c.execute("select '4111111111111112'").fetchone() == ("4111111111111112",)
        assert c.execute("select 12345678901234567890::numeric").fetchone()[0] == (
            12345678901234567890)
        assert c.execute("select '411111111111'").fetchone() == ("411111111111",)


def test_a_pan_opening_a_free_text_field_is_masked(gateway: GatewayProcess,
                                                     token: str) -> None:
    """A 49-byte note starting with a card number: the field's length (00 00 00 31) puts
    an ASCII "1" right before the PAN in the stream. It is masked all the same, with
    psycopg text and binary, and asyncpg."""
    note = PAN + " exp 12/27 cvv 123 holder JO DOE"
    note += "." * (49 - len(note))
    assert len(note) == 49
    with connect(gateway, token, autocommit=True) as c:
        for binary in (False, True):
            with c.cursor(binary=binary) as cur:
                (value,) = cur.execute("select %s::text", (note,)).fetchone()
            assert PAN not in value and len(value) == 49 and value.endswith(note[16:])
            assert value[12:16] == "1111"

    async def main() -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = await asyncpg.connect(host="127.0.0.1", port=gateway.port, user="ci-bot",
                                     password=token, database="payments", ssl=ctx)
        try:
            value = await conn.fetchval("select $1::text", note)
        finally:
            await conn.close()
        assert PAN not in value and len(value) == 49

    asyncio.run(main())
