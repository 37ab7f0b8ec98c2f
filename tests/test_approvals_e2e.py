"""Just-in-time approval through a real gateway: a held statement waits in the gateway
while its session is told the request id; an approver acts with `pgwarden approvals`
over the gRPC admin API; the statement then runs, or fails with the approver's reason,
or expires, or is withdrawn by a client cancel."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import PgBackend, fill_disk, upstreams_for

from gateway.audit import generate_keypair
from gateway.devtools.harness import GatewayProcess

REPO = Path(__file__).resolve().parents[1]
POLICY = Path(__file__).resolve().parent / "policies" / "approvals"
TIMEOUT = 4.0  # approvals.timeout of the test gateway


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gw(pg: PgBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    pg.server.psql("CREATE TABLE IF NOT EXISTS vault (id int, secret text);"
                   "INSERT INTO vault SELECT 1, 'launch codes' WHERE NOT EXISTS "
                   "(SELECT FROM vault)", dbname="payments", user=pg.service.name)
    port, http = free_port(), free_port()
    d = tmp_path_factory.mktemp("approvals")
    generate_keypair(d / "audit.pem", d / "audit.pub")
    extra = (f"admin:\n  grpc: 127.0.0.1:{port}\n  http: 127.0.0.1:{http}\n"
             f"  admin_groups: [gw-admins]\n"
             f"approvals:\n  timeout: {TIMEOUT}s\n"
             f"audit:\n  dir: {d / 'audit'}\n  signing_key: {{file: {d / 'audit.pem'}}}\n")
    g = GatewayProcess(d / "gw", upstreams_for(pg), policy_dir=POLICY, extra_yaml=extra)
    g.audit_dir = d / "audit"  # type: ignore[attr-defined]
    g.admin_port = port  # type: ignore[attr-defined]
    g.http_port = http  # type: ignore[attr-defined]
    with g:
        yield g


def approvals_cli(gw: GatewayProcess, *args: str, subject: str = "alice",
                  groups: tuple[str, ...] = ("dba-oncall",)) -> subprocess.CompletedProcess[str]:
    token = gw.directory / f"token-{subject}-{'-'.join(groups)}.jwt"
    token.write_text(gw.token(subject=subject, groups=groups))
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "approvals", *args, "--admin",
         f"127.0.0.1:{gw.admin_port}", "--token", str(token)],  # type: ignore[attr-defined]
        capture_output=True, text=True, timeout=30, check=False, cwd=REPO)


def listed(gw: GatewayProcess, rid: str, *extra: str) -> dict[str, Any]:
    """Request `rid` as `pgwarden approvals list --json` shows it."""
    out = approvals_cli(gw, "list", "--json", *extra)
    assert out.returncode == 0, out.stderr
    return next(i for i in json.loads(out.stdout) if i["id"] == rid)


def deny_and_finish(gw: GatewayProcess, client: HeldClient, rid: str, reason: str) -> None:
    """Deny `rid` and wait for `client`, held by it, to get its refusal."""
    out = approvals_cli(gw, "deny", rid, "--reason", reason)
    assert out.returncode == 0, out.stdout + out.stderr
    client.finish()


def audit_trail(gw: GatewayProcess) -> list[dict[str, Any]]:
    """The records in the running gateway's audit files: the complete lines (one without
    its newline yet is being written as this reads)."""
    records = []
    for f in sorted(gw.audit_dir.glob("*.jsonl")):  # type: ignore[attr-defined]
        text = f.read_text()
        records += [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]
    return records


def requested_record(gw: GatewayProcess, rid: str) -> dict[str, Any]:
    """The one approval.requested record of `rid`, checked against the held decision it
    links: the same session, who and where, in the same chain."""
    trail = audit_trail(gw)
    requested = [r for r in trail if r.get("approval_id") == rid
                 and r["type"] == "approval.requested"]
    assert len(requested) == 1, requested
    (req,) = requested
    held = next(r for r in trail if r["seq"] == req["decision_seq"]
                and r["instance"] == req["instance"])
    assert held["type"] == "decision" and held["outcome"] == "held", held
    assert (req["session"], req["who"], req["where"]) == (
        held["session"], held["who"], held["where"])
    assert req["expires_at"] and req["requester"] == held["who"]["subject"]
    return req


def resolution_record(gw: GatewayProcess, rid: str, event: str) -> dict[str, Any]:
    """`rid`'s approval.<event> record (resolved in any worker: no decision_seq), checked
    to name the requester's session, who and connection and the request's expiry."""
    deadline = time.monotonic() + 5
    while not (done := [r for r in audit_trail(gw) if r.get("approval_id") == rid
                        and r["type"] == f"approval.{event}"]):
        assert time.monotonic() < deadline, f"no approval.{event} record of {rid}"
        time.sleep(0.05)
    assert len(done) == 1, done
    (rec,) = done
    req = requested_record(gw, rid)  # (written once: the gateway's, not the event's)
    assert (rec["session"], rec["who"]) == (req["session"], req["who"])
    assert rec["where"]["connection"] == req["where"]["connection"] == "payments"
    assert rec["expires_at"] == req["expires_at"]
    return rec


class HeldClient:
    """A client running one statement in a thread (it blocks while held)."""

    def __init__(self, gw: GatewayProcess, sql: str, subject: str = "ci-bot") -> None:
        self.conn = psycopg.connect(gw.dsn("payments"), autocommit=True,
                                    password=gw.token(subject=subject, groups=("ci",)))
        self.notices: list[str] = []
        self.conn.add_notice_handler(lambda d: self.notices.append(d.message_primary or ""))
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(sql,), daemon=True)
        self.thread.start()

    def _run(self, sql: str) -> None:
        try:
            self.result = self.conn.execute(sql).fetchall()
        except BaseException as e:  # handed to the test
            self.error = e

    def request_id(self, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for n in self.notices:
                if "held for approval: request " in n:
                    return n.split("request ")[1].split()[0]
            time.sleep(0.05)
        raise AssertionError(f"no hold notice; notices={self.notices} error={self.error}")

    def finish(self, timeout: float = 15.0) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the statement is still held"

    def close(self) -> None:
        self.conn.close()


def test_a_held_statement_runs_once_approved(gw: GatewayProcess) -> None:
    client = HeldClient(gw, "select secret from vault")
    try:
        rid = client.request_id()
        assert rid.startswith("apr_")
        item = listed(gw, rid)
        assert item["subject"] == "ci-bot" and item["connection"] == "payments"
        assert "vault" in item["sql"] and item["requested_at"]
        assert client.result is None and client.thread.is_alive()  # still waiting
        out = approvals_cli(gw, "approve", rid, "--reason", "INC-42 reconciliation")
        assert out.returncode == 0, out.stdout + out.stderr
        client.finish()
        assert client.error is None and client.result == [("launch codes",)]
        assert client.conn.execute("select 1").fetchone() == (1,)  # the session goes on
        granted = resolution_record(gw, rid, "granted")
        assert granted["approver"] == "alice" and "INC-42" in granted["reason"]
        trail = audit_trail(gw)
        outcomes = [r["outcome"] for r in trail if r["type"] == "decision"
                    and "vault" in (r.get("sql") or "")]
        assert "held" in outcomes and "allowed" in outcomes
        session = requested_record(gw, rid)["session"]
    finally:
        client.close()
    # the session's totals count its held decision and both statements it ran
    deadline = time.monotonic() + 10
    while not (end := [r for r in audit_trail(gw) if r["type"] == "session.end"
                       and r["session"] == session]):
        assert time.monotonic() < deadline, "no session.end"
        time.sleep(0.05)
    totals = end[0]["totals"]
    assert (totals["held"], totals["allowed"], totals["denied"]) == (1, 2, 0), totals


def test_the_request_is_recorded_with_its_session_and_decision_before_it_is_shown(
        gw: GatewayProcess) -> None:
    """approval.requested names the requester's session (who, where) and the held
    decision's seq, and is written by the session's gateway before the client is told
    the request id, so no approver can act on a request the trail lacks. Found by an
    adversarial probe: it had no session, no decision_seq and no expires_at."""
    client = HeldClient(gw, "select id as requested_rec from vault", subject="hana")
    try:
        rid = client.request_id()
        req = requested_record(gw, rid)  # at once: no wait for the writer
        assert req["who"]["subject"] == "hana" and req["where"]["client_addr"]
        assert req["expires_at"] == listed(gw, rid)["expires_at"]
        deny_and_finish(gw, client, rid, "recorded")
    finally:
        client.close()


def test_a_request_the_trail_cannot_record_is_withdrawn_and_refused_with_58030(
        gw: GatewayProcess, pg: PgBackend, tmp_path_factory: pytest.TempPathFactory
        ) -> None:  # (gw: the vault table)
    """The audit disk fills up while a session is idle: its next statement is held, but
    the request's record cannot be written, so no approver may act on it: withdrawn, the
    statement refused with 58030, the client never told of a request."""
    d = tmp_path_factory.mktemp("approvals-fulldisk")
    disk = d / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True)
    try:
        generate_keypair(d / "audit.pem", d / "audit.pub")
        port = free_port()
        extra = (f"admin:\n  grpc: 127.0.0.1:{port}\n"
                 f"approvals:\n  timeout: {TIMEOUT}s\n"
                 f"audit:\n  dir: {disk / 'audit'}\n"
                 f"  signing_key: {{file: {d / 'audit.pem'}}}\n  retry_interval: 0.2s\n")
        g = GatewayProcess(d / "gw", upstreams_for(pg), policy_dir=POLICY, extra_yaml=extra)
        g.admin_port = port  # type: ignore[attr-defined]
        with g, psycopg.connect(g.dsn("payments"), autocommit=True,
                                password=g.token(subject="ivan", groups=("ci",))) as c:
            notices: list[str] = []
            c.add_notice_handler(lambda n: notices.append(n.message_primary or ""))
            assert c.execute("select 1").fetchone() == (1,)
            time.sleep(0.5)  # (its completion record written too: the trail is healthy)
            filler = fill_disk(disk)  # to the last byte
            # a held decision's record longer than a page: it cannot fit what is left of
            # the audit file's last one
            ids = ",".join(map(str, range(2000)))
            sql = f"select id from vault where id not in ({ids})"  # noqa: S608 (ints)
            with pytest.raises(psycopg.Error) as refused:
                c.execute(sql)
            assert refused.value.sqlstate == "58030", refused.value
            assert not any("held for approval" in n for n in notices), notices
            out = approvals_cli(g, "list", "--json", "--all")
            assert out.returncode == 0, out.stderr
            assert [(i["status"], i["reason"]) for i in json.loads(out.stdout)
                    if i["subject"] == "ivan"] == [
                ("withdrawn", "the audit trail cannot be written")]
            filler.unlink()  # (space returns: the gateway stops cleanly)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_denied_statement_fails_with_the_approvers_reason(gw: GatewayProcess) -> None:
    client = HeldClient(gw, "select count(*) from vault")
    try:
        rid = client.request_id()
        deny_and_finish(gw, client, rid, "not during the freeze")
        assert isinstance(client.error, psycopg.errors.InsufficientPrivilege)
        assert "not during the freeze" in str(client.error) and "alice" in str(client.error)
        assert resolution_record(gw, rid, "denied")["approver"] == "alice"
    finally:
        client.close()


def test_the_requester_and_non_members_cannot_approve(gw: GatewayProcess) -> None:
    client = HeldClient(gw, "select id from vault", subject="bob")
    try:
        rid = client.request_id()
        own = approvals_cli(gw, "approve", rid, "--reason", "me", subject="bob")
        assert own.returncode == 1 and "bob requested" in own.stdout + own.stderr
        outsider = approvals_cli(gw, "approve", rid, "--reason", "x", subject="carol",
                                 groups=("ci",))
        assert outsider.returncode == 1, outsider.stdout + outsider.stderr
        assert client.thread.is_alive()  # neither released it
        deny_and_finish(gw, client, rid, "cleanup")
    finally:
        client.close()


def test_no_answer_expires_the_request(gw: GatewayProcess) -> None:
    client = HeldClient(gw, "select secret from vault where id = 1")
    try:
        rid = client.request_id()
        client.finish(timeout=TIMEOUT + 10)
        assert isinstance(client.error, psycopg.errors.InsufficientPrivilege)
        assert "not approved within" in str(client.error)
        resolution_record(gw, rid, "expired")
    finally:
        client.close()


def test_a_client_cancel_withdraws_the_request(gw: GatewayProcess) -> None:
    client = HeldClient(gw, "select secret from vault where id > 0")
    try:
        rid = client.request_id()
        client.conn.cancel()
        client.finish()
        assert isinstance(client.error, psycopg.errors.QueryCanceled), client.error
        assert listed(gw, rid, "--all")["status"] == "withdrawn"
        resolution_record(gw, rid, "withdrawn")
    finally:
        client.close()


def test_two_held_statements_are_resolved_independently(gw: GatewayProcess) -> None:
    a = HeldClient(gw, "select 'a', id from vault")
    b = HeldClient(gw, "select 'b', id from vault")
    try:
        ra, rb = a.request_id(), b.request_id()
        assert ra != rb
        deny_and_finish(gw, b, rb, "only one")
        assert isinstance(b.error, psycopg.errors.InsufficientPrivilege)
        assert a.thread.is_alive()
        assert approvals_cli(gw, "approve", ra, "--reason", "ok").returncode == 0
        a.finish()
        assert a.result == [("a", 1)]
    finally:
        a.close()
        b.close()


def test_a_grant_window_lets_the_same_statement_run_until_it_expires(
        gw: GatewayProcess) -> None:
    sql = "select id, secret from vault order by id"
    first = HeldClient(gw, sql, subject="dave")
    try:
        rid = first.request_id()
        assert approvals_cli(gw, "approve", rid, "--reason", "window").returncode == 0
        first.finish()
        assert first.error is None
        # within grant_ttl (3 s): no new hold
        with psycopg.connect(gw.dsn("payments"), autocommit=True,
                             password=gw.token(subject="dave", groups=("ci",))) as c:
            assert c.execute(sql).fetchall() == [(1, "launch codes")]
        # the use is the session's own record, linking the decision it held
        trail = audit_trail(gw)
        (used,) = [r for r in trail if r["type"] == "approval.grant_used"
                   and r["approval_id"] == rid]
        held = next(r for r in trail if r["seq"] == used["decision_seq"])
        assert held["type"] == "decision" and held["outcome"] == "held"
        assert used["session"] == held["session"] != requested_record(gw, rid)["session"]
        assert used["who"]["subject"] == "dave" and used["expires_at"]
        time.sleep(3.5)
        again = HeldClient(gw, sql, subject="dave")
        try:
            again.request_id()  # held again once the grant expired
            deny_and_finish(gw, again, again.request_id(), "done")
        finally:
            again.close()
    finally:
        first.close()


def test_a_revoked_grant_is_recorded_naming_its_request_and_who_revoked_it(
        gw: GatewayProcess) -> None:
    sql = "select secret from vault where id = 1"
    first = HeldClient(gw, sql, subject="erin")
    try:
        rid = first.request_id()
        assert approvals_cli(gw, "approve", rid, "--reason", "window").returncode == 0
        first.finish()
    finally:
        first.close()
    out = approvals_cli(gw, "grants", "--json", subject="root", groups=("gw-admins",))
    assert out.returncode == 0, out.stderr
    (grant,) = [g for g in json.loads(out.stdout) if g["request_id"] == rid]
    out = approvals_cli(gw, "revoke", grant["id"], "--reason", "closing early",
                        subject="root", groups=("gw-admins",))
    assert out.returncode == 0, out.stdout + out.stderr
    deadline = time.monotonic() + 5
    while not (rec := [r for r in audit_trail(gw) if r["type"] == "approval.grant_revoked"
                       and r["approval_id"] == rid]):
        assert time.monotonic() < deadline, "no approval.grant_revoked record"
        time.sleep(0.05)
    (revoked,) = rec
    assert revoked["requester"] == "erin" and revoked["approver"] == "root"
    assert revoked["reason"] == "closing early" and revoked["expires_at"]


def test_the_admin_api_shows_no_card_number_a_person_or_a_token_wrote(
        gw: GatewayProcess) -> None:
    """Reasons, subjects and groups are people's and tokens' text: masked in the answers
    as in the audit records."""
    client = HeldClient(gw, "select id from vault where id = 2", subject="4111111111111111")
    try:
        rid = client.request_id()
        out = approvals_cli(gw, "approve", rid, "--reason", "card 4111 1111 1111 1111 ok")
        assert out.returncode == 0, out.stdout + out.stderr
        client.finish()
    finally:
        client.close()
    shown = approvals_cli(gw, "list", "--json", "--all")
    assert shown.returncode == 0 and rid in shown.stdout, shown.stderr
    assert "4111111111111111" not in shown.stdout
    assert "4111 1111 1111 1111" not in shown.stdout and "1111 ok" in shown.stdout


def test_health_and_metrics_reflect_the_data_path(gw: GatewayProcess) -> None:
    """/healthz answers, and /metrics counts what this test did: a statement allowed and
    one approved (whichever tests ran before it in the module)."""
    import urllib.request

    base = f"http://127.0.0.1:{gw.http_port}"  # type: ignore[attr-defined]
    with urllib.request.urlopen(base + "/healthz", timeout=5) as r:  # noqa: S310 (http://)
        assert r.status == 200
    with psycopg.connect(gw.dsn("payments"), autocommit=True, password=gw.token()) as c:
        c.execute("select 1").fetchone()
    client = HeldClient(gw, "select secret from vault where id = 1", subject="metrics-bot")
    try:
        out = approvals_cli(gw, "approve", client.request_id(), "--reason", "metrics")
        assert out.returncode == 0, out.stdout + out.stderr
        client.finish()
        assert client.error is None
    finally:
        client.close()
    with urllib.request.urlopen(base + "/metrics", timeout=5) as r:  # noqa: S310 (http://)
        text = r.read().decode()
    assert 'pgwarden_statements_total{outcome="allow"}' in text
    assert "pgwarden_sessions_total" in text and "pgwarden_bundle_info{" in text
    assert 'pgwarden_approvals_resolved_total{status="approved"}' in text


def test_an_approval_through_one_gateway_releases_a_statement_held_by_another(
        gw: GatewayProcess, pg: PgBackend, tmp_path_factory: pytest.TempPathFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two gateway processes share a PostgreSQL approvals store: the statement is held
    by A, the approver talks to B's admin API, and A learns of it (LISTEN/NOTIFY)."""
    monkeypatch.setenv("PGWARDEN_TEST_APPROVALS_DSN", pg.dsn(pg.service))
    store = ("approvals:\n  timeout: 20s\n  store: postgres\n"
             "  dsn: {env: PGWARDEN_TEST_APPROVALS_DSN}\n")
    d = tmp_path_factory.mktemp("shared-store")
    port_b = free_port()
    a = GatewayProcess(d / "a", upstreams_for(pg), policy_dir=POLICY, extra_yaml=store)
    b = GatewayProcess(d / "b", upstreams_for(pg), policy_dir=POLICY,
                       extra_yaml=store + f"admin:\n  grpc: 127.0.0.1:{port_b}\n",
                       issuer=None)
    with a:
        b.issuer = a.issuer  # one identity provider for both gateways
        (d / "b" / "issuer").mkdir(parents=True, exist_ok=True)
        for f in (d / "a" / "issuer").iterdir():
            (d / "b" / "issuer" / f.name).write_bytes(f.read_bytes())
        with b:
            b.admin_port = port_b  # type: ignore[attr-defined]
            client = HeldClient(a, "select secret from vault where id = 1 and true")
            try:
                rid = client.request_id()
                out = approvals_cli(b, "approve", rid, "--reason", "via gateway B")
                assert out.returncode == 0, out.stdout + out.stderr
                client.finish()
                assert client.error is None and client.result == [("launch codes",)]
            finally:
                client.close()


def test_extended_protocol_statements_are_held_the_same_way(gw: GatewayProcess) -> None:
    result: dict[str, Any] = {}
    notices: list[str] = []
    conn = psycopg.connect(gw.dsn("payments"), autocommit=True, password=gw.token())
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))

    def run() -> None:
        try:  # parameters: Parse/Bind/Execute, decided (and held) at Parse
            result["rows"] = conn.execute("select secret from vault where id = %s",
                                          (1,)).fetchall()
        except psycopg.Error as e:
            result["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 10
        while not any("held for approval" in n for n in notices):
            assert time.monotonic() < deadline, result
            time.sleep(0.05)
        rid = next(n for n in notices if "held for approval" in n).split("request ")[1].split()[0]
        assert approvals_cli(gw, "approve", rid, "--reason", "prepared").returncode == 0
        t.join(15)
        assert result == {"rows": [("launch codes",)]}
    finally:
        conn.close()


def test_min_approvals_from_the_decision_needs_two_approvers(gw: GatewayProcess) -> None:
    client = HeldClient(gw, "select secret from vault limit 1")
    try:
        rid = client.request_id()
        first = approvals_cli(gw, "approve", rid, "--reason", "one of two")
        assert first.returncode == 0, first.stdout + first.stderr
        time.sleep(0.5)
        assert client.thread.is_alive()  # one approval is not enough
        second = approvals_cli(gw, "approve", rid, "--reason", "two of two", subject="erin")
        assert second.returncode == 0, second.stdout + second.stderr
        client.finish()
        assert client.error is None and client.result == [("launch codes",)]
    finally:
        client.close()


def test_the_admin_api_of_a_single_worker_lists_terminates_and_reloads(
        gw: GatewayProcess) -> None:
    """One worker has no siblings to ask: its sessions are the gateway's, an unknown
    session is not found, and a reload is this worker's."""
    import grpc

    from gateway.admin import admin_pb2 as pb
    from gateway.admin import admin_pb2_grpc

    auth = [("authorization", "Bearer " + gw.token(subject="root", groups=("gw-admins",)))]
    with psycopg.connect(gw.dsn("payments"), password=gw.token(subject="lister"),
                         autocommit=True) as c, \
            grpc.insecure_channel(f"127.0.0.1:{gw.admin_port}") as channel:  # type: ignore[attr-defined]
        c.execute("select 1")
        stub = admin_pb2_grpc.AdminStub(channel)
        sessions = stub.ListSessions(pb.ListSessionsRequest(), metadata=auth).sessions
        assert "lister" in {s.subject for s in sessions}
        with pytest.raises(grpc.RpcError) as e:
            stub.TerminateSession(pb.TerminateSessionRequest(id="0" * 16, reason="test"),
                                  metadata=auth)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert stub.ReloadBundle(pb.ReloadBundleRequest(), metadata=auth).status \
            in ("unchanged", "activated")
        assert c.execute("select 2").fetchone() == (2,)


def test_admin_api_lists_and_terminates_sessions_of_every_worker(
        pg: PgBackend, tmp_path_factory: pytest.TempPathFactory) -> None:
    import grpc

    from gateway.admin import admin_pb2 as pb
    from gateway.admin import admin_pb2_grpc

    port = free_port()
    extra = f"admin:\n  grpc: 127.0.0.1:{port}\n  admin_groups: [platform]\n"
    with GatewayProcess(tmp_path_factory.mktemp("workers"), upstreams_for(pg), workers=2,
                        port=free_port(), extra_yaml=extra) as g:
        # start() returns once one worker listens: wait for both (worker 0 also serves
        # the admin API), or the connections below could all reach the first one.
        for worker in (0, 1):
            g.wait_for_log(lambda d, w=worker: d.get("event") == "gateway.listening"
                           and d.get("worker") == w)
        # SO_REUSEPORT spreads connections by hash: 16 all landing on one worker would
        # happen once in 32768 runs.
        conns = [psycopg.connect(g.dsn("payments"), password=g.token(subject=f"job{i}"),
                                 autocommit=True) for i in range(16)]
        try:
            for c in conns:
                c.execute("select 1")
            auth = [("authorization", "Bearer " + g.token(subject="root", groups=("platform",)))]
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                # Worker 0 serves the admin API; the other may be taking connections first.
                grpc.channel_ready_future(channel).result(timeout=15)
                stub = admin_pb2_grpc.AdminStub(channel)
                sessions = stub.ListSessions(pb.ListSessionsRequest(), metadata=auth).sessions
                assert {s.subject for s in sessions} >= {f"job{i}" for i in range(16)}
                assert {s.worker for s in sessions} == {0, 1}  # both workers answered
                victim = next(s for s in sessions if s.worker == 1)
                done = stub.TerminateSession(
                    pb.TerminateSessionRequest(id=victim.id, reason="test"), metadata=auth)
                assert done.terminated
            time.sleep(0.3)
            broken = 0
            for c in conns:
                try:
                    c.execute("select 1")
                except psycopg.OperationalError:
                    broken += 1
            assert broken == 1
        finally:
            for c in conns:
                c.close()


def test_an_unusable_approvals_store_refuses_holds_but_the_gateway_serves(
        gw: GatewayProcess, pg: PgBackend, tmp_path_factory: pytest.TempPathFactory) -> None:
    extra = "approvals:\n  path: /dev/null/approvals.db\n"  # cannot be created
    with GatewayProcess(tmp_path_factory.mktemp("no-store"), upstreams_for(pg),
                        policy_dir=POLICY, extra_yaml=extra) as g:
        with psycopg.connect(g.dsn("payments"), autocommit=True, password=g.token()) as c:
            assert c.execute("select 1").fetchone() == (1,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege,
                               match="needs approval, but the approvals service cannot take "
                                     "requests: cannot open the approval store"):
                c.execute("select secret from vault")
        assert any(r.get("event") == "approvals.store_unavailable" for r in g.logs)


def test_an_approvals_store_that_could_not_open_at_start_is_used_once_it_can(
        gw: GatewayProcess, pg: PgBackend, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The store's directory cannot be made when the gateway starts (its parent is a
    file); once the operator fixes that, statements are held again without a restart.
    The service used to be dropped for good (and with it the admin API)."""
    d = tmp_path_factory.mktemp("late-store")
    (d / "state").write_text("in the way")
    extra = (f"approvals:\n  timeout: 1s\n  path: {json.dumps(str(d / 'state' / 'a.db'))}\n")
    with GatewayProcess(d / "gw", upstreams_for(pg), policy_dir=POLICY, extra_yaml=extra) as g:
        with psycopg.connect(g.dsn("payments"), autocommit=True, password=g.token()) as c:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="cannot take"):
                c.execute("select secret from vault")
            (d / "state").unlink()
            (d / "state").mkdir()
            notices: list[str] = []
            c.add_notice_handler(lambda n: notices.append(n.message_primary or ""))
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=r"expired|timed out"):
                c.execute("select secret from vault")
            assert any("held for approval" in n for n in notices), notices
            assert c.execute("select 1").fetchone() == (1,)


def test_a_statement_needing_approval_is_held_only_alone(gw: GatewayProcess) -> None:
    """An approver is shown one statement: in a query string with others, its approval
    would release them too. Found by an adversarial probe."""
    with psycopg.connect(gw.dsn("payments"), autocommit=True,
                         password=gw.token(subject="erin", groups=("ci",))) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="of its own"):
            c.execute("select id from vault where id = 1; select secret from vault")
        assert c.execute("select 1").fetchone() == (1,)


def test_a_grant_window_covers_only_the_statement_the_approver_saw(
        gw: GatewayProcess) -> None:
    """The grant was matched on pglast's fingerprint, which takes `where true` for `where
    false`, and another schema's table for this one's. Found by an adversarial probe."""
    shown = "select id, secret from vault where false"
    first = HeldClient(gw, shown, subject="frank")
    try:
        rid = first.request_id()
        assert approvals_cli(gw, "approve", rid, "--reason", "shown").returncode == 0
        first.finish()
        assert first.error is None and first.result == []
        for other in ("select id, secret from vault where true",
                      "select id, secret from public.vault where false"):
            again = HeldClient(gw, other, subject="frank")  # within the grant's 3 s
            try:
                assert again.request_id().startswith("apr_"), other  # held again
                deny_and_finish(gw, again, again.request_id(), "no")
            finally:
                again.close()
    finally:
        first.close()


def test_an_approval_request_shows_no_card_number(gw: GatewayProcess) -> None:
    client = HeldClient(gw, 'select secret as "4111111111111111" from vault', subject="gina")
    try:
        rid = client.request_id()
        item = listed(gw, rid)
        assert "4111111111111111" not in item["sql"] and "1111" in item["sql"]
        deny_and_finish(gw, client, rid, "no")
    finally:
        client.close()
