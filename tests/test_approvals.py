"""Approvals: the store on SQLite and PostgreSQL, the service's rules, grants, webhook."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.server
import json
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PgBackend

from gateway.approvals import (
    ApprovalError,
    ApprovalService,
    ApprovalStore,
    PostgresStore,
    SqliteStore,
    Vote,
    WebhookNotifier,
    open_store,
)
from gateway.approvals.model import ApprovalRequest, new_id
from gateway.identity.model import Identity

ISS = "https://issuer.example"


def ident(subject: str, *groups: str, issuer: str = ISS) -> Identity:
    return Identity(subject=subject, issuer=issuer, groups=tuple(groups), claims={})


REQUESTER = ident("ci-bot", "ci", "dba")  # even in the approver group: still not allowed
ALICE = ident("alice", "dba")
BOB = ident("bob", "dba", "sre")
MALLORY = ident("mallory", "dev")


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_db(pg: PgBackend) -> tuple[str, str]:
    """A database and role of its own for the approval store: (dsn, database name)."""
    role = f"apr_{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(16)
    pg.server.add_role(role, password)
    pg.server.create_database(role, owner=role)
    return pg.server.dsn(user=role, password=password, dbname=role), role


@pytest.fixture(scope="module")
def pg_dsn(pg_db: tuple[str, str]) -> str:
    return pg_db[0]


def _prefix() -> str:
    return f"t{secrets.token_hex(3)}_"


@pytest.fixture(params=["sqlite", "postgres"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path
                  ) -> Iterator[Callable[[], ApprovalStore]]:
    """Makes stores sharing one backing database (as replicas would)."""
    made: list[ApprovalStore] = []
    prefix = _prefix()
    if request.param == "sqlite":
        def make() -> ApprovalStore:
            s = SqliteStore(tmp_path / "approvals.db", prefix=prefix)
            made.append(s)
            return s
    else:
        dsn = request.getfixturevalue("pg_dsn")

        def make() -> ApprovalStore:
            s = PostgresStore(dsn, prefix=prefix)
            made.append(s)
            return s
    yield make
    for s in made:
        s.close()


def pending(store: ApprovalStore, *, min_approvals: int = 1, grant_ttl: float | None = None,
            ttl: float = 60.0, subject: str = "ci-bot") -> ApprovalRequest:
    now = time.time()
    return store.create_request(ApprovalRequest(
        id=new_id("apr_"), subject=subject, issuer=ISS, groups=("ci",),
        connection="payments", session_id="s1", sql="SELECT * FROM cards WHERE id = $1",
        fingerprint="fp1", approvers=("dba",), min_approvals=min_approvals,
        grant_ttl=grant_ttl, input_digest="d", requested_at=now, expires_at=now + ttl,
        holder="gw-1"))


def vote(who: Identity, decision: str = "approve", reason: str = "ok") -> Vote:
    return Vote(who.subject, who.issuer, decision, reason, time.time())


# -- the store --------------------------------------------------------------------------------


def test_store_round_trip_and_revisions(store_factory: Callable[[], ApprovalStore]) -> None:
    store = store_factory()
    store.open()
    store.open()  # idempotent, and the schema is created once
    rev0 = store.max_rev()
    a = pending(store)
    b = pending(store, min_approvals=2, grant_ttl=30)
    assert b.rev == a.rev + 1 and a.rev > rev0
    got = store.get_request(b.id)
    assert got == b and got.approvers == ("dba",) and got.grant_ttl == 30
    assert store.get_request("apr_missing") is None
    assert {r.id for r in store.list_requests("pending")} >= {a.id, b.id}
    assert [r.id for r in store.changes_since(rev0)] == [a.id, b.id]
    assert [r.id for r in store.changes_since(a.rev)] == [b.id]
    # A second store object on the same database sees the same rows.
    other = store_factory()
    other.open()
    assert other.get_request(a.id) == a
    done = other.finish(a.id, "withdrawn", at=time.time(), reason="client left")
    assert done is not None and done.status == "withdrawn" and done.rev > b.rev
    assert [r.id for r in store.changes_since(b.rev)] == [a.id]


def test_store_votes_min_approvals_and_grant(store_factory: Callable[[], ApprovalStore]) -> None:
    store = store_factory()
    store.open()
    r = pending(store, min_approvals=2, grant_ttl=60)
    after1, grant, resolved = store.vote(r.id, vote(ALICE), grant_id="grt_a")
    assert not resolved and grant is None and after1.status == "pending"
    assert after1.approvals == 1
    with pytest.raises(ApprovalError) as e:
        store.vote(r.id, vote(ALICE), grant_id="grt_b")
    assert e.value.code == "already_voted"
    after2, grant, resolved = store.vote(r.id, vote(BOB, reason="checked"), grant_id="grt_c")
    assert resolved and after2.status == "approved"
    assert after2.resolved_by == "alice, bob" and after2.resolution_reason == "checked"
    assert grant is not None and grant.id == "grt_c" == after2.grant_id
    assert grant.granted_by == ("alice", "bob")
    assert grant.expires_at == pytest.approx(grant.created_at + 60)
    with pytest.raises(ApprovalError) as e:
        store.vote(r.id, vote(ident("carol", "dba")), grant_id="grt_d")
    assert e.value.code == "not_pending"
    with pytest.raises(ApprovalError) as e:
        store.vote("apr_nope", vote(ALICE))
    assert e.value.code == "not_found"
    # A deny ends a request at once, whatever min_approvals says.
    d = pending(store, min_approvals=3)
    stored, grant, resolved = store.vote(d.id, vote(BOB, "deny", "no"))
    assert resolved and stored.status == "denied" and stored.resolved_by == "bob"
    assert grant is None
    # finish() never overrides a decision.
    assert store.finish(d.id, "expired", at=time.time()) is None


def test_store_expiry(store_factory: Callable[[], ApprovalStore]) -> None:
    store = store_factory()
    store.open()
    old = pending(store, ttl=-1)
    fresh = pending(store, ttl=60)
    with pytest.raises(ApprovalError) as e:
        store.vote(old.id, vote(ALICE))
    assert e.value.code == "not_pending"
    expired = store.expire_due(time.time())
    assert [r.id for r in expired] == [old.id]
    assert store.get_request(old.id).status == "expired"
    assert store.get_request(fresh.id).status == "pending"
    assert store.expire_due(time.time()) == []
    # Resolved long ago → purged; pending ones stay.
    assert store.purge(time.time() + 1) >= 1
    assert store.get_request(old.id) is None and store.get_request(fresh.id) is not None


def test_store_grants(store_factory: Callable[[], ApprovalStore]) -> None:
    store = store_factory()
    store.open()
    r = pending(store, grant_ttl=60)
    _, grant, _ = store.vote(r.id, vote(ALICE), grant_id="grt_" + secrets.token_hex(4))
    assert grant is not None
    now = time.time()
    found = store.find_grant("ci-bot", ISS, "payments", "fp1", now)
    assert found is not None and found.id == grant.id and found.uses == 1
    assert store.find_grant("ci-bot", ISS, "payments", "fp1", now).uses == 2
    for args in [("other", ISS, "payments", "fp1"), ("ci-bot", "https://x", "payments", "fp1"),
                 ("ci-bot", ISS, "legacy", "fp1"), ("ci-bot", ISS, "payments", "fp2")]:
        assert store.find_grant(*args, now) is None
    assert store.find_grant("ci-bot", ISS, "payments", "fp1", grant.expires_at + 1) is None
    assert [g.id for g in store.list_grants(now)] == [grant.id]
    revoked, did = store.revoke_grant(grant.id, at=now, by="alice", reason="done")
    assert did and revoked is not None and revoked.revoked_by == "alice"
    again, did = store.revoke_grant(grant.id, at=now + 1, by="bob")
    assert not did and again is not None and again.revoked_by == "alice"  # idempotent
    assert store.revoke_grant("grt_nope", at=now) == (None, False)
    assert store.find_grant("ci-bot", ISS, "payments", "fp1", now) is None
    assert store.list_grants(now) == []
    assert [g.id for g in store.list_grants(now, include_inactive=True)] == [grant.id]


def test_concurrent_votes_count_once(store_factory: Callable[[], ApprovalStore]) -> None:
    """Two approvers through two gateways at the same moment: exactly one resolves it."""
    stores = [store_factory() for _ in range(4)]
    for s in stores:
        s.open()
    r = pending(stores[0], min_approvals=2, grant_ttl=60)
    results: list[Any] = []
    barrier = threading.Barrier(4)

    def act(i: int) -> None:
        barrier.wait()
        try:
            results.append(stores[i].vote(r.id, vote(ident(f"a{i}", "dba")),
                                          grant_id=f"grt_{i}_{secrets.token_hex(2)}"))
        except ApprovalError as exc:
            results.append(exc.code)

    threads = [threading.Thread(target=act, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    resolved = [x for x in results if isinstance(x, tuple) and x[2]]
    assert len(resolved) == 1
    assert sorted(x for x in results if isinstance(x, str)) == ["not_pending", "not_pending"]
    final = stores[0].get_request(r.id)
    assert final.status == "approved" and final.approvals == 2
    assert len(stores[0].list_grants(time.time())) == 1


def test_open_store_from_config(tmp_path: Path) -> None:
    class Cfg:
        store = "sqlite"
        path = None

    s = open_store(Cfg(), base_dir=tmp_path)
    assert isinstance(s, SqliteStore) and s.path == tmp_path / "state" / "approvals.db"
    s.open()
    assert (s.path.stat().st_mode & 0o777) == 0o600
    s.close()

    class Pg:
        store = "postgres"
        dsn = None

    with pytest.raises(ValueError, match="dsn"):
        open_store(Pg())
    with pytest.raises(ValueError, match="prefix"):
        SqliteStore(tmp_path / "x.db", prefix="bad-prefix;")


# -- the service ------------------------------------------------------------------------------


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, kind: str, details: dict[str, Any]) -> None:
        json.dumps(details)  # serializable, for the audit trail
        self.seen.append((kind, details))

    def kinds(self) -> list[str]:
        return [k for k, _ in self.seen]


def service(store: ApprovalStore, events: Events | None = None, **kw: Any) -> ApprovalService:
    kw.setdefault("sweep_interval", 0)
    return ApprovalService(store, on_event=events, **kw)


async def hold(svc: ApprovalService, *, subject: str = "ci-bot", issuer: str = ISS,
               connection: str = "payments", fingerprint: str = "fp1",
               **kw: Any) -> ApprovalRequest:
    kw.setdefault("approvers", ["dba"])
    return await svc.request(subject=subject, issuer=issuer, groups=["ci"],
                             connection=connection, session_id="s1",
                             sql_redacted="UPDATE cards SET pan = $1 WHERE id = $2",
                             fingerprint=fingerprint, input_digest="d", **kw)


def refused(code: str) -> Any:
    class _Check:
        def __enter__(self) -> None:
            return None

        def __exit__(self, typ: Any, exc: Any, tb: Any) -> bool:
            assert isinstance(exc, ApprovalError), f"expected ApprovalError({code}), got {exc!r}"
            assert exc.code == code, (exc.code, exc.message)
            return True

    return _Check()


def test_approve_resolves_wait_and_rules(tmp_path: Path) -> None:
    events = Events()

    async def main() -> None:
        async with service(SqliteStore(tmp_path / "a.db"), events) as svc:
            req = await hold(svc)
            assert req.id.startswith("apr_") and len(req.id) == 20
            assert svc.held_count == 1
            waiter = asyncio.create_task(svc.wait(req.id))
            await asyncio.sleep(0.05)
            with refused("self_approval"):
                await svc.approve(req.id, REQUESTER, "looks fine to me")
            # Same subject, another issuer: a different identity, but not an approver.
            with refused("not_approver"):
                await svc.approve(req.id, ident("ci-bot", "ci", issuer="https://x"), "x")
            with refused("not_approver"):
                await svc.approve(req.id, MALLORY, "trust me")
            with refused("not_approver"):
                await svc.deny(req.id, MALLORY, "no")
            with refused("reason_required"):
                await svc.approve(req.id, ALICE, "   ")
            with refused("invalid"):
                await svc.approve(req.id, ALICE, "x" * 1001)
            with refused("not_found"):
                await svc.approve("apr_aaaaaaaaaaaaaaaa", ALICE, "ok")
            assert not waiter.done()
            decided = await svc.approve(req.id, ALICE, "ticket OPS-1")
            assert decided.resolved and decided.grant is None
            res = await asyncio.wait_for(waiter, 2)
            assert res.status == "approved" and res.approved and res.by == "alice"
            assert res.reason == "ticket OPS-1" and res.request_id == req.id
            assert svc.held_count == 0
            with refused("not_pending"):
                await svc.deny(req.id, BOB, "too late")
            # wait() on a resolved request returns at once.
            assert (await svc.wait(req.id, 1)).status == "approved"
            with refused("not_found"):
                await svc.wait("apr_missing")
            with refused("invalid"):
                await hold(svc, approvers=[])
            with refused("invalid"):
                await hold(svc, min_approvals=0)

    asyncio.run(main())
    assert events.kinds() == ["approval_requested", "approval_granted"]
    granted = events.seen[1][1]
    assert granted["approver"] == {"subject": "alice", "issuer": ISS, "groups": ["dba"]}
    assert granted["approval"]["sql"] == "UPDATE cards SET pan = $1 WHERE id = $2"
    assert granted["approval"]["votes"][0]["reason"] == "ticket OPS-1"


def test_deny_and_optional_reason(tmp_path: Path) -> None:
    events = Events()

    async def main() -> None:
        async with service(SqliteStore(tmp_path / "a.db"), events,
                           require_reason=False) as svc:
            req = await hold(svc)
            waiter = asyncio.create_task(svc.wait(req.id))
            decided = await svc.deny(req.id, BOB, None)
            assert decided.resolved and decided.request.status == "denied"
            res = await asyncio.wait_for(waiter, 2)
            assert (res.status, res.by, res.reason) == ("denied", "bob", None)

    asyncio.run(main())
    assert events.kinds() == ["approval_requested", "approval_denied"]


def test_min_approvals_two(tmp_path: Path) -> None:
    events = Events()

    async def main() -> None:
        async with service(SqliteStore(tmp_path / "a.db"), events) as svc:
            req = await hold(svc, min_approvals=2)
            waiter = asyncio.create_task(svc.wait(req.id))
            first = await svc.approve(req.id, ALICE, "one")
            assert not first.resolved and first.request.approvals == 1
            with refused("already_voted"):
                await svc.approve(req.id, ALICE, "again")
            await asyncio.sleep(0.1)
            assert not waiter.done()
            second = await svc.approve(req.id, BOB, "two")
            assert second.resolved
            res = await asyncio.wait_for(waiter, 2)
            assert res.status == "approved" and res.by == "alice, bob"
            assert [v.subject for v in res.votes] == ["alice", "bob"]

    asyncio.run(main())
    assert events.kinds() == ["approval_requested", "approval_vote", "approval_granted"]


def test_expiry_and_withdraw(tmp_path: Path) -> None:
    events = Events()

    async def main() -> None:
        async with service(SqliteStore(tmp_path / "a.db"), events) as svc:
            req = await hold(svc)
            t0 = time.monotonic()
            res = await svc.wait(req.id, timeout=0.3)
            assert res.status == "expired" and 0.25 < time.monotonic() - t0 < 2
            with refused("not_pending"):
                await svc.approve(req.id, ALICE, "late")
            # The request's own lifetime (request timeout) also bounds the wait.
            short = await hold(svc, timeout=0.2)
            assert (await svc.wait(short.id)).status == "expired"

            req2 = await hold(svc)
            waiter = asyncio.create_task(svc.wait(req2.id))
            await asyncio.sleep(0.05)
            assert await svc.withdraw(req2.id, "client disconnected")
            res2 = await asyncio.wait_for(waiter, 2)
            assert (res2.status, res2.reason) == ("withdrawn", "client disconnected")
            assert not await svc.withdraw(req2.id, "again")
            with refused("not_pending"):
                await svc.approve(req2.id, ALICE, "late")

            # A holder that died: the sweep (or a listing) expires its request.
            orphan = await hold(svc, timeout=0.01)
            await asyncio.sleep(0.05)
            listed = {r.id: r.status for r in await svc.list_requests()}
            assert listed[orphan.id] == "expired"
            assert [r.id for r in await svc.list_requests("pending")] == []

    asyncio.run(main())
    assert events.kinds() == [
        "approval_requested", "approval_expired", "approval_requested", "approval_expired",
        "approval_requested", "approval_withdrawn", "approval_requested", "approval_expired"]


def test_grant_window_reuse_expiry_and_revocation(tmp_path: Path) -> None:
    events = Events()

    async def main() -> None:
        async with service(SqliteStore(tmp_path / "a.db"), events) as svc:
            assert await svc.active_grant("ci-bot", ISS, "payments", "fp1") is None
            req = await hold(svc, grant_ttl=0.6)
            decided = await svc.approve(req.id, ALICE, "for the migration")
            grant = decided.grant
            assert grant is not None and grant.id.startswith("grt_")
            res = await svc.wait(req.id)
            assert res.grant == grant
            got = await svc.active_grant("ci-bot", ISS, "payments", "fp1")
            assert got is not None and got.id == grant.id and got.uses == 1
            # Other identity, issuer, connection or fingerprint: no window.
            assert await svc.active_grant("ci-bot", "https://x", "payments", "fp1") is None
            assert await svc.active_grant("other", ISS, "payments", "fp1") is None
            assert await svc.active_grant("ci-bot", ISS, "legacy", "fp1") is None
            assert await svc.active_grant("ci-bot", ISS, "payments", "fp2") is None
            assert [g.id for g in await svc.list_grants()] == [grant.id]
            await asyncio.sleep(0.7)
            assert await svc.active_grant("ci-bot", ISS, "payments", "fp1") is None
            assert await svc.list_grants() == []
            assert len(await svc.list_grants(include_inactive=True)) == 1

            req2 = await hold(svc, grant_ttl=60)
            grant2 = (await svc.approve(req2.id, BOB, "ok")).grant
            assert grant2 is not None
            revoked = await svc.revoke_grant(grant2.id, by=ALICE, reason="done early")
            assert revoked.revoked_by == "alice" and revoked.revoke_reason == "done early"
            assert await svc.active_grant("ci-bot", ISS, "payments", "fp1") is None
            await svc.revoke_grant(grant2.id, by=BOB)  # idempotent, no second event
            with refused("not_found"):
                await svc.revoke_grant("grt_missing")

    asyncio.run(main())
    assert events.kinds() == ["approval_requested", "approval_granted", "grant_used",
                              "approval_requested", "approval_granted", "grant_revoked"]
    assert events.seen[2][1]["grant"]["uses"] == 1


def test_two_services_on_postgres_notify(pg_dsn: str) -> None:
    """An approval through gateway B resolves gateway A's wait through LISTEN/NOTIFY
    (polling is set to 30 s, so only the notification can explain a quick wake-up)."""
    prefix = _prefix()

    async def main() -> None:
        a = service(PostgresStore(pg_dsn, prefix=prefix), poll_interval=30)
        b = service(PostgresStore(pg_dsn, prefix=prefix), poll_interval=30)
        async with a, b:
            await asyncio.sleep(0.3)  # both listeners are up
            req = await hold(a, grant_ttl=60)
            waiter = asyncio.create_task(a.wait(req.id))
            async with a.subscribe() as changes:
                await asyncio.sleep(0.1)
                t0 = time.monotonic()
                with refused("self_approval"):
                    await b.approve(req.id, REQUESTER, "mine")
                await b.approve(req.id, ALICE, "approved via B")
                res = await asyncio.wait_for(waiter, 5)
                assert time.monotonic() - t0 < 3
                seen = await asyncio.wait_for(changes.__anext__(), 5)
                assert seen.id == req.id and seen.status == "approved"
            assert res.status == "approved" and res.by == "alice" and res.grant is not None
            assert (await a.active_grant("ci-bot", ISS, "payments", "fp1")).id == res.grant.id
            # A revocation through A is seen by B at once (no cache).
            await a.revoke_grant(res.grant.id, by=ALICE)
            assert await b.active_grant("ci-bot", ISS, "payments", "fp1") is None
            # Withdrawn on A while B watches.
            async with b.subscribe() as changes:
                req2 = await hold(a)
                first = await asyncio.wait_for(changes.__anext__(), 5)
                assert first.id == req2.id and first.status == "pending"
                await a.withdraw(req2.id, "gone")
                second = await asyncio.wait_for(changes.__anext__(), 5)
                assert (second.id, second.status) == (req2.id, "withdrawn")

    asyncio.run(main())


def test_postgres_connection_loss_is_survived(pg: PgBackend, pg_db: tuple[str, str]) -> None:
    """Every store connection killed (a restart, a failover): the next calls reconnect
    and redo their work once, and the listener comes back and wakes the waiters."""
    dsn, dbname = pg_db
    prefix = _prefix()

    def kill_all() -> str:
        return pg.server.psql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'pgwarden-approvals' AND datname = current_database()",
            dbname=dbname)

    async def main() -> None:
        a = service(PostgresStore(dsn, prefix=prefix), poll_interval=30)
        b = service(PostgresStore(dsn, prefix=prefix), poll_interval=30)
        async with a, b:
            req = await hold(a, grant_ttl=60)
            waiter = asyncio.create_task(a.wait(req.id))
            await asyncio.sleep(0.3)
            assert int(await asyncio.to_thread(kill_all)) >= 4  # 2 stores + 2 listeners
            await asyncio.sleep(0.1)
            decided = await b.approve(req.id, ALICE, "after the failover")
            assert decided.resolved
            res = await asyncio.wait_for(waiter, 10)
            assert res.status == "approved" and res.grant is not None
            assert (await a.active_grant("ci-bot", ISS, "payments", "fp1")) is not None
            assert a.healthy() and b.healthy()

    asyncio.run(main())


def test_store_outage_fails_closed(tmp_path: Path) -> None:
    async def main() -> None:
        async with service(SqliteStore(tmp_path / "a.db")) as svc:
            req = await hold(svc, grant_ttl=60)
            await svc.approve(req.id, ALICE, "ok")
            assert svc.healthy()
            # the store goes away under the service: its file cannot be opened again
            await svc._call(svc.store.close)
            (tmp_path / "a.db").rename(tmp_path / "away.db")
            (tmp_path / "a.db").mkdir()
            assert await svc.active_grant("ci-bot", ISS, "payments", "fp1") is None
            assert not svc.healthy()
            with refused("unavailable"):
                await hold(svc)
            (tmp_path / "a.db").rmdir()  # back: the next call opens it again by itself
            (tmp_path / "away.db").rename(tmp_path / "a.db")
            assert await svc.active_grant("ci-bot", ISS, "payments", "fp1") is not None
            assert svc.healthy()
        assert not svc.healthy()  # closed

    asyncio.run(main())
    with pytest.raises(ApprovalError) as info:
        PostgresStore("host=127.0.0.1 port=1 dbname=x user=x connect_timeout=1").open()
    assert info.value.code == "unavailable"


def test_two_services_on_one_sqlite_file(tmp_path: Path) -> None:
    """Worker processes share the SQLite file; waiters learn by polling."""

    async def main() -> None:
        a = service(SqliteStore(tmp_path / "shared.db"), poll_interval=0.1)
        b = service(SqliteStore(tmp_path / "shared.db"), poll_interval=0.1)
        async with a, b:
            req = await hold(a)
            waiter = asyncio.create_task(a.wait(req.id))
            async with a.subscribe() as changes:
                await b.deny(req.id, BOB, "not today")
                res = await asyncio.wait_for(waiter, 3)
                assert res.status == "denied" and res.reason == "not today"
                seen = await asyncio.wait_for(changes.__anext__(), 3)
                assert (seen.id, seen.status) == (req.id, "denied")

    asyncio.run(main())


# -- webhook ----------------------------------------------------------------------------------


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]]
    fail_first: int

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((dict(self.headers), body))
        if type(self).fail_first > 0:
            type(self).fail_first -= 1
            self.send_response(503)
        else:
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hook_server() -> Iterator[tuple[str, type[_Hook]]]:
    handler = type("Hook", (_Hook,), {"received": [], "fail_first": 0})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/hook", handler
    srv.shutdown()
    srv.server_close()


# A worker's start, as far as the store goes: open it once told to, and say how it went.
_OPEN_STORE = """
import sys
from gateway.approvals import SqliteStore
print("ready", flush=True)
sys.stdin.read(1)
try:
    SqliteStore(sys.argv[1]).open()
    print("opened")
except Exception as e:  # what the worker would log as approvals.unavailable
    print(f"{type(e).__name__}: {e}")
"""


def test_workers_opening_a_new_sqlite_file_at_once_all_open_it(tmp_path: Path) -> None:
    """Every worker process opens the store as it starts; on a new file they race to
    switch it to WAL, and SQLite answers all but one "database is locked" at once
    instead of waiting (its busy handler would deadlock). The store must wait instead:
    a worker that failed here served no approvals and no admin API."""
    outcomes: list[str] = []
    for attempt in range(16):
        path = str(tmp_path / f"approvals-{attempt}.db")
        procs = [subprocess.Popen([sys.executable, "-c", _OPEN_STORE, path], text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                 for _ in range(4)]
        for p in procs:  # all of them at the door, then all at once
            assert p.stdout is not None and p.stdout.readline() == "ready\n"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("g")
            p.stdin.flush()
        outcomes += [p.communicate(timeout=30)[0].strip() for p in procs]
    assert outcomes == ["opened"] * len(outcomes)


def test_webhook_signed_and_retried(tmp_path: Path, hook_server: tuple[str, Any]) -> None:
    url, handler = hook_server
    handler.fail_first = 1
    secret = "s3cret-webhook-key"

    async def main() -> None:
        hook = WebhookNotifier(url, secret, timeout=2, retries=2, backoff=0.05)
        async with service(SqliteStore(tmp_path / "a.db"), webhook=hook) as svc:
            req = await hold(svc)
            await svc.deny(req.id, BOB, "no")
            await hook.drain(5)
            assert hook.delivered == 2 and hook.failed == 0

    asyncio.run(main())
    # requested (503, then retried) + denied
    assert len(handler.received) == 3
    events = []
    for headers, body in handler.received:
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Pgwarden-Signature"], expected)
        assert headers["Content-Type"] == "application/json"
        doc = json.loads(body)
        assert doc["event"] == headers["X-Pgwarden-Event"]
        events.append(doc["event"])
    assert events == ["approval_requested", "approval_requested", "approval_denied"]
    assert json.loads(handler.received[-1][1])["data"]["approval"]["status"] == "denied"


def test_a_webhook_carries_no_card_number_an_approver_typed(
        tmp_path: Path, hook_server: tuple[str, Any]) -> None:
    url, handler = hook_server

    async def main() -> None:
        hook = WebhookNotifier(url, "s3cret-webhook-key", timeout=2, retries=0)
        async with service(SqliteStore(tmp_path / "a.db"), webhook=hook) as svc:
            req = await hold(svc)
            await svc.deny(req.id, BOB, "customer 5555-5555-5555-4444 disputes it")
            await hook.drain(5)

    asyncio.run(main())
    body = handler.received[-1][1].decode()
    assert json.loads(body)["event"] == "approval_denied"
    assert "5555-5555-5555-4444" not in body and "disputes" in body


def test_webhook_never_blocks(tmp_path: Path) -> None:
    """A receiver that is down costs the data path nothing; a full queue drops."""

    async def main() -> None:
        hook = WebhookNotifier("http://127.0.0.1:9/unreachable", "k", timeout=0.5,
                               retries=1, backoff=0.01, max_queue=2)
        t0 = time.monotonic()
        assert hook.notify("approval_requested", {"n": 1})
        assert hook.notify("approval_requested", {"n": 2})
        hook.notify("approval_requested", {"n": 3})
        hook.notify("approval_requested", {"n": 4})
        assert time.monotonic() - t0 < 0.1
        assert hook.dropped >= 1
        await hook.drain(10)
        assert hook.failed >= 2 and hook.delivered == 0
        await hook.close()

    asyncio.run(main())
    with pytest.raises(ValueError):
        WebhookNotifier("file:///etc/passwd")
