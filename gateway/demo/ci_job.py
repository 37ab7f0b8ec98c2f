"""The scripted "CI job" the demo runs through the gateway, with psycopg.

It is what a pipeline step would do: present its workload token as the password, never
a database password, and run its queries over TLS.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

Say = Callable[[str], None]


def _scalar(cur: psycopg.Cursor[Any]) -> Any:
    """The first column of the one row `cur` returned."""
    row = cur.fetchone()
    if row is None:
        raise RuntimeError("the query returned no row")
    return row[0]


def run_ci_job(dsn: str, token: str, expired_token: str, say: Say) -> list[str]:
    """Runs the job; returns the list of failed expectations (empty when all went well)."""
    problems: list[str] = []

    say("1. connect with the workload JWT as the password (sslmode=require)")
    with psycopg.connect(dsn, password=token, application_name="ci-nightly-report") as conn:
        who = _scalar(conn.execute("select current_user"))
        tls = conn.info.pgconn.ssl_in_use
        say(f"   connected over TLS={tls}; upstream role is {who!r} "
            "(the job never saw its password)")
        if not tls:
            problems.append("the session is not encrypted")

        say("2. read: card count and spend per card holder")
        n = _scalar(conn.execute("select count(*) from cards"))
        rows = conn.execute(
            "select c.holder, count(t.id), sum(t.amount) "
            "from cards c join transactions t on t.card_id = c.id "
            "group by 1 order by 3 desc limit 3").fetchall()
        say(f"   {n} cards; top spenders: "
            + ", ".join(f"{h} ({k} tx, {s})" for h, k, s in rows))

        say("3. write inside a transaction, then roll part of it back")
        with conn.transaction():
            conn.execute("insert into transactions (card_id, amount) values (1, 42.00)")
            try:
                with conn.transaction():
                    conn.execute("insert into transactions (card_id, amount) values (999, 1)")
            except psycopg.errors.ForeignKeyViolation:
                say("   a bad row was refused by the database (foreign key) and rolled back")
        total = _scalar(conn.execute("select count(*) from transactions"))
        say(f"   transactions now: {total}")

        say("4. export with COPY ... TO STDOUT (csv)")
        with conn.cursor().copy(
                "copy (select id, card_id, amount from transactions order by id) "
                "to stdout (format csv, header)") as cp:
            exported = b"".join(bytes(chunk) for chunk in cp)
        lines = exported.count(b"\n") - 1  # minus the header
        say(f"   exported {lines} rows, {len(exported)} bytes")

        say("5. prepared statement, binary results")
        with conn.cursor(binary=True) as cur:
            cur.execute("select sum(amount) from transactions where card_id = %s", (1,),
                        prepare=True)
            say(f"   card 1 spend: {_scalar(cur)}")

        say("6. masking: card numbers leave the gateway masked, whatever the client asks")
        rows = conn.execute("select holder, pan as card from cards order by id limit 3"
                            ).fetchall()
        say("   " + ", ".join(f"{h}: {p}" for h, p in rows))
        if any(p is None or not p.startswith("************") for _, p in rows):
            problems.append("a card number came back unmasked")
        computed = "select substr(pan, 1, 12) from cards"
        try:
            conn.execute(computed)
            problems.append("an expression over a masked column was let through")
        except psycopg.errors.InsufficientPrivilege as e:
            say(f"   {computed!r}\n     -> ERROR 42501: {e.diag.message_primary}")
            conn.rollback()

        say("7. policy: what the job may not do is refused before it reaches the database")
        for sql in ("select holder, cvv from cards",
                    "update transactions set amount = 0",
                    "drop table transactions"):
            try:
                conn.execute(sql)
                problems.append(f"the policy let through: {sql}")
            except psycopg.errors.InsufficientPrivilege as e:
                say(f"   {sql!r}\n     -> ERROR 42501: {e.diag.message_primary}"
                    f"\n        DETAIL: {e.diag.message_detail}")
                conn.rollback()

    say("8. an expired token is refused before anything reaches the database")
    try:
        psycopg.connect(dsn, password=expired_token).close()
        problems.append("an expired token was accepted")
    except psycopg.OperationalError as e:
        say(f"   refused: {str(e).strip().splitlines()[-1]}")
    return problems
