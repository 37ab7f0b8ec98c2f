"""The demo's human side: a held statement approved from the CLI, then the audit trail
verified and one session shown as a timeline."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

Say = Callable[[str], None]
HELD_SQL = "copy (select id, holder, pan from cards order by id) to stdout (format csv)"


def pgwarden(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def held_export(dsn: str, token: str, admin: str, approver_token: Path, say: Say
                ) -> list[str]:
    """The CI job asks for a card export (held by the policy for dba-oncall); the on-call
    approver lists and approves it with `pgwarden approvals`. Returns failed expectations."""
    problems: list[str] = []
    result: dict[str, Any] = {}
    notices: list[str] = []

    def job() -> None:
        try:
            with psycopg.connect(dsn, password=token, autocommit=True,
                                 application_name="ci-card-export") as conn:
                conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
                with conn.cursor().copy(HELD_SQL) as cp:
                    result["data"] = b"".join(bytes(chunk) for chunk in cp)
        except psycopg.Error as e:
            result["error"] = e

    thread = threading.Thread(target=job, daemon=True)
    thread.start()
    say(f"   the job runs {HELD_SQL!r}")
    request = None
    deadline = time.monotonic() + 20
    while request is None and time.monotonic() < deadline:
        listed = pgwarden("approvals", "list", "--json", "--admin", admin,
                          "--token", str(approver_token))
        if listed.returncode == 0:
            pending = json.loads(listed.stdout)
            request = pending[0] if pending else None
        if request is None:
            time.sleep(0.2)
    if request is None:
        return ["the held statement never showed up in `pgwarden approvals list`"]
    say(f"   the gateway holds it: NOTICE {notices[0] if notices else '(none)'}")
    say(f"   on-call runs `pgwarden approvals list`: {request['id']} from "
        f"{request['subject']} on {request['connection']}: {request['sql']!r}")
    approved = pgwarden("approvals", "approve", request["id"], "--reason",
                        "CHG-1042 quarterly card-holder reconciliation",
                        "--admin", admin, "--token", str(approver_token))
    say(f"   on-call runs `pgwarden approvals approve {request['id']} --reason ...`: "
        f"{(approved.stdout or approved.stderr).strip()}")
    thread.join(30)
    if "data" in result:
        rows = result["data"].decode().splitlines()
        say(f"   the export runs: {len(rows)} rows, card numbers masked "
            f"(first: {rows[0] if rows else '-'})")
        if any("************" not in r for r in rows):
            problems.append("the approved export returned an unmasked card number")
    else:
        problems.append(f"the approved export did not run: {result.get('error')}")
    return problems


def audit_evidence(audit_dir: Path, public_key: Path, say: Say,
                   anchors: Path | None = None) -> list[str]:
    """`pgwarden audit verify` over the sealed trail (held to the checkpoints the
    gateway logged, `anchors`), and the CI session's timeline."""
    problems: list[str] = []
    held = ["--anchors", str(anchors)] if anchors is not None else []
    verify = pgwarden("audit", "verify", str(audit_dir), "--key", str(public_key), *held)
    shown = f" --anchors {anchors.name}" if anchors is not None else ""
    said = (verify.stdout.strip() or verify.stderr.strip()).splitlines()
    say(f"   $ pgwarden audit verify {audit_dir.name}/ --key audit-signing.pub{shown}\n"
        + "\n".join(f"     {line.strip()}" for line in said))
    if verify.returncode != 0:
        problems.append("audit verify failed")
    records = [json.loads(line) for f in sorted(audit_dir.glob("*.jsonl"))
               for line in f.read_text().splitlines() if line.strip()]
    starts = [r for r in records if r.get("type") == "session.start"]
    if not starts:
        return [*problems, "no session in the audit trail"]
    session = starts[0]["session"]
    show = pgwarden("audit", "show", str(audit_dir), "--session", session)
    lines = show.stdout.rstrip().splitlines()
    say(f"   $ pgwarden audit show --session {session}   ({len(lines)} lines; first 14)")
    for line in lines[:14]:
        say(f"     {line}")
    return problems
