"""One client connection: startup, TLS, JWT authentication, upstream login, relay."""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from gateway import logs
from gateway.admin import metrics
from gateway.audit import AuditContext, AuditError, AuditUnavailable, records
from gateway.audit.redact import scrub
from gateway.audit.template import TemplateCache
from gateway.config.model import ConnectionConfig, GatewayConfig, PolicyConfig
from gateway.enforce.catalog_cache import CatalogUnavailable
from gateway.enforce.gate import StatementGate
from gateway.enforce.input_doc import SessionFacts, printable, reported_name
from gateway.identity.errors import AuthError
from gateway.identity.model import Identity
from gateway.masking.results import SKIPPED, UNFINISHED, ResultMasker, StatementTag
from gateway.masking.safety_net import mask_in_place
from gateway.wire import backend as be
from gateway.wire.codec import frame
from gateway.wire.errors import ProtocolViolation
from gateway.wire.framing import MessageFramer
from gateway.wire.frontend import PasswordMessage
from gateway.wire.startup import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    StartupReader,
)

from . import upstream as up
from .cancel import CancelAction
from .endpoint import ConnectionClosed, Endpoint, TlsHandshakeFailed
from .relay import CLIENT_TYPES, Relay
from .startup_params import StartupParamError, upstream_params

if TYPE_CHECKING:
    from .server import GatewayServer

_PASSWORD_PHASE_TYPES = CLIENT_TYPES | frozenset(b"p")
_MAX_PASSWORD_MESSAGE = 64 * 1024
# How long a connection past max_connections may take to say what it wants (a cancel
# request, or a startup to refuse): a client sends it at once.
REFUSING_SECONDS = 2.0
# The fields of a statement completion that change between records of one shape.
_STATEMENT_HOLES = ("decision_seq", "rows", "masked_values", "duration_us")


def max_statement_size(config: GatewayConfig) -> int:
    """policy.max_statement_size (its default without a policy section)."""
    policy = config.policy
    return policy.max_statement_size if policy is not None else PolicyConfig.max_statement_size


class SessionFailure(Exception):
    """Ends the session with a FATAL ErrorResponse carrying this SQLSTATE and text."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@dataclass
class ClientHello:
    startup: StartupMessage
    tls: bool
    leftover: bytes


class Session:
    def __init__(self, server: GatewayServer, client: Endpoint, *,
                 over_limit: bool = False) -> None:
        self.server = server
        self.client = client
        # Past max_connections: the startup is read (a cancel request is still served),
        # and the client told why, over TLS when it asked for it (libpq reads no error
        # sent in answer to its SSLRequest), as PostgreSQL does.
        self.over_limit = over_limit
        self.id = secrets.token_hex(8)
        peer = client.extra_info("peername")
        self.client_addr = str(peer[0]) if isinstance(peer, tuple) else "local"
        self.started_at = time.time()
        self.identity: Identity | None = None
        self.relay: Relay | None = None
        self.connection_name: str | None = None
        self.audit_ctx: AuditContext | None = None
        self._templates: TemplateCache | None = None  # this session's record shapes
        self.application_name: str | None = None
        metrics.SESSIONS_TOTAL.inc()
        metrics.SESSIONS_ACTIVE.inc()
        self.totals = records.SessionTotals()
        self._cancel_pid: int | None = None
        self._cancel_upstream: CancelAction | None = None
        self._cancelling: asyncio.Task[None] | None = None
        self._pending_client = b""

    async def run(self) -> None:
        cfg = self.server.config.listen
        outcome = "closed"
        ended_with: str | None = None  # the SQLSTATE the session was refused with
        try:
            # The client's part of the startup is timed; the upstream login has its own
            # timeout (connect_timeout), so that a server that hangs is named as such.
            async with asyncio.timeout(min(cfg.startup_timeout, REFUSING_SECONDS)
                                       if self.over_limit else cfg.startup_timeout):
                hello = await self._startup()
                if hello is None:
                    return
                if self.over_limit:
                    raise SessionFailure("53300", "sorry, too many clients already")
                login = await self._authenticate(hello)
            if login is None:
                return
            link = await self._connect_upstream(*login)
            outcome = await self._relay(link, hello)
        except SessionFailure as e:
            outcome = "refused"
            ended_with = e.sqlstate
            self._fatal(e.sqlstate, str(e))
        except ProtocolViolation as e:
            outcome = "protocol_violation"
            logs.warning("session.protocol_violation", session=self.id, sqlstate=e.sqlstate,
                         reason=str(e), client_addr=self.client_addr)
            self._fatal(e.sqlstate, str(e))
        except TlsHandshakeFailed as e:
            outcome = "tls_handshake_failed"
            logs.warning("session.tls_failed", session=self.id, client_addr=self.client_addr,
                         error=str(e))
        except TimeoutError:
            outcome = "startup_timeout"
            self._fatal("08P01", "the client did not complete startup in time")
        except ConnectionClosed:
            outcome = "client_closed_during_startup"
        except Exception as e:  # never a traceback to the client, never a dead gateway
            outcome = "internal_error"
            logs.error("session.internal_error", session=self.id, error=type(e).__name__)
            self._fatal("XX000", "internal gateway error")
        finally:
            if self._cancel_pid is not None:
                self.server.cancels.unregister(self._cancel_pid)
            self.client.close()
            totals = self._totals()
            metrics.SESSIONS_ACTIVE.dec()
            metrics.MASKED_VALUES.inc(totals.get("masked_values", 0))
            metrics.SAFETY_NET_HITS.inc(totals.get("safety_net_hits", 0))
            self.totals.safety_net_hits = totals.get("safety_net_hits", 0)
            recorded = getattr(self.relay.gate, "recorded", None) if self.relay else None
            if recorded is not None:  # the decision records of what never ran
                self.totals.denied, self.totals.held = recorded["denied"], recorded["held"]
            relay = self.relay
            gate = relay.gate if relay is not None else None
            task = asyncio.current_task()
            if isinstance(gate, StatementGate) and gate.held is not None and \
                    relay is not None and not (task is not None and task.cancelling()):
                try:  # (its record before this session's end)
                    await asyncio.wait_for(gate.end_hold(relay.end_sqlstate), 5)
                except Exception as e:
                    logs.error("approval.withdraw_failed", session=self.id,
                               error=type(e).__name__)
            if self.audit_ctx is not None:
                self._close_unfinished()
                self._audit(records.session_end(
                    self.audit_ctx, reason=outcome, totals=self.totals,
                    duration_us=(time.time() - self.started_at) * 1e6,
                    sqlstate=ended_with or (self.relay.end_sqlstate if self.relay else None)),
                    owed=True)
            if self.identity is not None or outcome not in ("closed",):
                logs.info(
                    "session.end", session=self.id, outcome=outcome,
                    subject=self.identity.subject if self.identity else None,
                    connection=self.connection_name,
                    duration_ms=round((time.time() - self.started_at) * 1000, 1),
                    **totals,
                )

    def _close_unfinished(self) -> None:
        """Statements still running upstream as the session ends get their completion
        record now, as `unfinished`: every decision that let one through has an outcome."""
        relay = self.relay
        results = relay.results if relay is not None else None
        if relay is None or results is None:
            return
        try:
            # in the result that was streaming: its hits, rows and masked values
            hits, sent = relay.take_carried_hits(), relay.take_sent()
            masked = results.take_partial_counts()
            for tag in relay.unfinished():
                self._statement_done(tag, UNFINISHED, b"", masked, hits, sent)
                hits = sent = 0
                masked = {}
            # decided and recorded, never sent: the session ended while the batch waited
            gate = relay.gate
            for tag in gate.take_unsent() if isinstance(gate, StatementGate) else ():
                self._statement_done(tag, SKIPPED, b"", {})
        except Exception as e:  # the session's end must be recorded whatever this hits
            logs.error("audit.unfinished_failed", session=self.id, error=type(e).__name__)

    def _totals(self) -> dict[str, int]:
        relay = self.relay
        if relay is None:
            return {"messages": 0}
        gate = relay.gate
        return {
            "messages": relay.messages_from_client,
            "statements_decided": getattr(gate, "decisions", 0),
            "statements_denied": getattr(gate, "denials", 0),
            "masked_values": relay.results.masked_values if relay.results else 0,
            "safety_net_hits": relay.safety.hits if relay.safety else 0,
        }

    def terminate(self, code: str, message: str) -> None:
        if self.relay is not None:
            self._cancel_running()
            self.relay.terminate(code, message)
        else:
            self._fatal(code, message)
            self.client.close()

    # -- phases ------------------------------------------------------------------------

    async def _startup(self) -> ClientHello | None:
        reader = StartupReader()
        tls = False
        ctx = self.server.tls_context
        while True:
            packet = reader.next_packet()
            if packet is None:
                reader.feed(await self.client.read())
                continue
            if isinstance(packet, SSLRequest):
                if tls:
                    raise ProtocolViolation("SSL request received on an encrypted connection")
                if reader.pending():
                    # Plaintext bytes queued behind the request could be injected (CVE-2021-23214).
                    raise ProtocolViolation("received unencrypted data after SSL request")
                if ctx is None:
                    self.client.write(b"N")
                    continue
                self.client.write(b"S")
                await self.client.start_tls(ctx, server_side=True)
                tls = True
            elif isinstance(packet, GSSENCRequest):
                if reader.pending() or tls:
                    raise ProtocolViolation("unexpected GSSAPI encryption request")
                self.client.write(b"N")
            elif isinstance(packet, CancelRequest):
                await self.server.handle_cancel(packet)
                return None
            else:
                return ClientHello(packet, tls, reader.take_pending())

    async def _authenticate(self, hello: ClientHello
                            ) -> tuple[ConnectionConfig, dict[str, str], bytes] | None:
        """The client's token and the connection it names: the connection, the upstream's
        startup parameters, and what the client sent after its password. None: it left."""
        listen = self.server.config.listen
        st = hello.startup
        user = printable(st.params.get("user", ""))
        dbname = printable(st.params.get("database") or st.params.get("user", ""))
        if not hello.tls and not listen.allow_plaintext:
            raise SessionFailure(
                "28000", "the gateway requires TLS: connect with sslmode=require or stronger"
            )
        try:
            params = upstream_params(st.params)
        except StartupParamError as e:
            raise SessionFailure("42501", str(e)) from None
        if st.minor > 0 or st.unsupported_options():
            self.client.write(be.NegotiateProtocolVersion(0, st.unsupported_options()).encode())
        self.client.write(be.Authentication(be.AUTH_CLEARTEXT).encode())
        token, leftover = await self._read_password(hello.leftover)
        if token is None:
            return None
        try:
            identity = await self.server.verifier.verify(token)
        except AuthError as e:
            logs.warning("auth.failure", session=self.id, reason=e.reason, user=user,
                         connection=dbname, client_addr=self.client_addr)
            metrics.AUTH_FAILURES.labels(reason=e.reason).inc()
            self._audit(records.auth_failure(
                reason=e.reason, sqlstate=e.sqlstate, client_addr=self.client_addr,
                application_name=st.params.get("application_name"), connection=dbname,
                db_user=user, session=self.id))
            raise SessionFailure(
                e.sqlstate, f'JWT authentication failed for user "{user}": {e}'
            ) from None
        self.identity = identity
        conn = self.server.config.connections.get(st.params.get("database") or st.params["user"])
        if conn is None:
            logs.warning("auth.unknown_connection", session=self.id, subject=identity.subject,
                         connection=dbname, client_addr=self.client_addr)
            self._audit(records.auth_failure(
                reason="unknown_connection", sqlstate="28000", client_addr=self.client_addr,
                application_name=st.params.get("application_name"), connection=dbname,
                db_user=user, session=self.id))
            raise SessionFailure(
                "28000", f'connection "{dbname}" is not configured on this gateway'
            )
        self.connection_name = conn.name
        logs.info("session.start", session=self.id, subject=identity.subject,
                  issuer=identity.issuer, groups=list(identity.groups), connection=conn.name,
                  user=user, client_addr=self.client_addr, tls=hello.tls,
                  application_name=printable(params.get("application_name", "")))
        return conn, params, leftover

    async def _connect_upstream(self, conn: ConnectionConfig, params: dict[str, str],
                                leftover: bytes) -> up.UpstreamLink:
        target = self.server.target(conn.name)
        try:
            link = await up.connect(target, params)
        except up.UpstreamRefused as e:
            logs.error("upstream.login_failed", session=self.id, connection=conn.name,
                       reason=str(e), sqlstate=e.error.code if e.error else None)
            raise SessionFailure(
                "08001", f'could not log in to the upstream of connection "{conn.name}"'
            ) from None
        except (OSError, TimeoutError) as e:
            logs.error("upstream.unreachable", session=self.id, connection=conn.name,
                       error=type(e).__name__)
            raise SessionFailure(
                "08001", f'the upstream of connection "{conn.name}" is unreachable'
            ) from None
        self._pending_client = leftover
        return link

    async def _read_password(self, pending: bytes) -> tuple[str | None, bytes]:
        """The first message must be the password; what a client pipelines after it is kept."""
        framer = MessageFramer(_PASSWORD_PHASE_TYPES, _MAX_PASSWORD_MESSAGE)
        data = pending
        while True:
            if data:
                _, frames = framer.feed(data)
                if frames:
                    mtype, body = frames[0]
                    if mtype == ord("X"):
                        return None, b""
                    if mtype != ord("p"):
                        raise ProtocolViolation("expected a password message")
                    rest = b"".join(frame(bytes([t]), b) for t, b in frames[1:])
                    return PasswordMessage(body).password(), rest + framer.take_rest()
            data = await self.client.read()

    async def _gate(self, link: up.UpstreamLink, hello: ClientHello) -> StatementGate | None:
        if not self.server.enforce:
            return None
        assert self.identity is not None and self.connection_name is not None
        conn = self.server.config.connections[self.connection_name]
        try:
            await self.server.catalogs.get(conn.name)
        except CatalogUnavailable as e:  # no catalog, no decisions: refuse the session
            link.endpoint.abort()
            raise SessionFailure(e.sqlstate, str(e)) from None
        params = hello.startup.params
        # the server's report of the name (it truncates it), which the gate then follows
        reported = dict(link.parameters).get("application_name",
                                             params.get("application_name", ""))
        self.application_name = reported_name(reported)
        facts = SessionFacts.build(
            self.identity, session_id=self.id, started_at=self.started_at, name=conn.name,
            database=conn.database, user=printable(params.get("user", "")),
            application_name=self.application_name,
            client_addr=self.client_addr, tls=hello.tls, networks=self.server.config.networks,
        )
        hash_key = self.server.config.masking.hash_key
        audit = self.server.audit
        if audit is not None:
            self.audit_ctx = AuditContext.from_input(facts.input_for({}))
            self._templates = TemplateCache(audit)
            if not self._audit(records.session_start(self.audit_ctx)):
                link.endpoint.abort()
                raise SessionFailure("58030", "the audit trail cannot be written: sessions "
                                     "are refused until it recovers")
        gate = StatementGate(facts=facts, connection=conn.name, catalogs=self.server.catalogs,
                             policy=lambda: self.server.policy_engine,
                             hash_key=hash_key.reveal().encode() if hash_key else None,
                             audit=audit, audit_ctx=self.audit_ctx,
                             approvals=self.server.approvals,
                             approval_timeout=self.server.config.approvals.timeout,
                             max_statement_size=max_statement_size(self.server.config))
        gate.on_renamed = self._renamed
        gate.startup(params)
        for name, value in link.parameters:
            gate.parameter_status(name, value)
        if gate.poisoned is not None:
            link.endpoint.abort()
            raise SessionFailure("0A000", gate.poisoned)
        return gate

    async def _relay(self, link: up.UpstreamLink, hello: ClientHello) -> str:
        gate = await self._gate(link, hello)
        self._cancel_upstream = self._cancel_action(link)
        key = self.server.cancels.register(self._cancel_upstream)
        self._cancel_pid = key.pid
        out = [be.Authentication(be.AUTH_OK).encode()]
        out += [be.ParameterStatus(n, v).encode() for n, v in link.parameters]
        out.append(key.encode())
        out.append(be.ReadyForQuery(link.status).encode())
        hello_bytes = b"".join(out)
        if self.server.config.masking.safety_net != "off":
            # The server echoes startup values (application_name...): same net as the relay.
            hello_bytes, _hits = mask_in_place(hello_bytes)
        self.client.write(hello_bytes)
        max_size = self.server.config.listen.max_message_size
        catalogs, name = self.server.catalogs, self.connection_name or ""

        def column_for(table_oid: int, attnum: int) -> tuple[str, str, str] | None:
            catalog = catalogs.current(name)
            return catalog.column_for_attnum(table_oid, attnum) if catalog else None

        # Without a gate (policy.enforce: false) no statement has a plan or a decision
        # record, so nothing needs its answers followed.
        results = None if gate is None else ResultMasker(column_for)
        relay = Relay(self.id, self.client, link.endpoint, max_size, gate,
                      safety_net=self.server.config.masking.safety_net, results=results,
                      on_result=self._statement_done if self.audit_ctx is not None else None)
        self.relay = relay
        relay.on_client_gone = self._cancel_running
        relay.start(self._pending_client + self.client.take_buffered(), link.leftover)
        # Rights end with the token: a session does not outlive the JWT it logged in with.
        expires = self.identity.expires_at if self.identity else None
        timer = None
        if expires is not None:
            # The same clock-skew tolerance the token was accepted with.
            leeway = next((p.leeway for p in self.server.config.identity.providers
                           if self.identity and p.issuer == self.identity.issuer), 0.0)
            timer = asyncio.get_running_loop().call_later(
                max(0.0, expires + leeway - time.time()), self._token_expired)
        try:
            return await relay.done
        finally:
            if timer is not None:
                timer.cancel()

    def _renamed(self, ctx: AuditContext | None, name: str) -> None:
        """The gate followed the server to a new application_name: this session's own
        records (its statements', its end) carry it from here on too."""
        self.application_name = name
        audit = self.server.audit
        if ctx is not None and audit is not None:  # (a ctx comes with an audit trail)
            self.audit_ctx = ctx
            self._templates = TemplateCache(audit)

    def _audit(self, record: dict[str, Any], *, wake: bool = True, owed: bool = False
               ) -> bool:
        """Append to the audit trail (if configured); False when it cannot be written.
        `owed`: see AuditWriter.append (a statement's or the session's end)."""
        audit = self.server.audit
        if audit is None:
            return True
        try:
            audit.append(record, wake=wake, owed=owed)
            return True
        except (AuditError, AuditUnavailable) as e:
            logs.error("audit.append_failed", session=self.id, error=str(e))
            return False

    def _statement_done(self, tag: StatementTag, mtype: int, body: bytes,
                        masked: dict[str, int], safety_net_hits: int = 0,
                        sent: int = 0) -> None:
        """A statement's result ended: its completion record, linked to its decision.
        `sent`: the rows the client was sent for it (DataRows, or a COPY TO's CopyData),
        its `rows` when no command tag says (an error partway, an Execute's row limit, a
        session that ended first)."""
        if self.audit_ctx is None:
            return
        if mtype == 0x43 and not masked and not safety_net_hits:  # the usual end, compiled
            templates = self._templates
            complete = templates.complete if templates is not None else None
            if complete is not None and complete(tag, body, self.totals) > 0:
                return  # (0: not a kind it takes, or no template yet: the path below)
        sqlstate = error = None
        rows = None
        # CommandComplete, nothing masked or withheld by a row limit: the usual end
        if mtype == 0x43 and not masked and not tag.withheld:
            rows = records.rows_from_complete(body)
            outcome = "allowed"
            values = 0
            totals = self.totals  # (SessionTotals.count of this outcome, in fewer steps)
            totals.statements += 1
            totals.allowed += 1
            totals.rows += rows or 0
        else:
            if mtype == 0x45:  # ErrorResponse
                err = be.decode_backend(mtype, body)
                sqlstate = getattr(err, "code", None)
                error = getattr(err, "message", None)
                outcome = "error"
                rows = sent
            elif mtype == 0x43:  # CommandComplete
                rows = records.rows_from_complete(body)
                outcome = "limited" if tag.withheld else "masked"
            elif mtype == SKIPPED:  # an earlier error: the server never ran it
                outcome = "skipped"
            elif mtype == UNFINISHED:  # the session ended first: it may or may not have run
                outcome = "unfinished"
                rows = sent
            else:  # EmptyQueryResponse (no rows), PortalSuspended (an Execute's row limit)
                outcome = "limited" if tag.withheld else "masked" if masked else "allowed"
                rows = sent
            values = sum(masked.values()) if masked else 0
            self.totals.count(outcome, rows=rows, masked_values=values)
        templates = self._templates
        duration = round((time.perf_counter() - tag.started) * 1e6) if tag.started else None
        # goes out with the next decision's write (or within a second): wake=False
        try:
            if error is None and templates is not None and not safety_net_hits:
                key = ("statement", tag.command, outcome, sqlstate,
                       tuple(sorted(masked)) if masked else ())
                holes = (tag.decision_seq, rows, values, duration)
                if templates.quick(key, holes, None) <= 0:  # a new shape (built once), or
                    # refused: append builds it, or raises why
                    # (partial, not a lambda: a closure would make cells of these
                    # variables on every call, hit or miss)
                    build = partial(self._statement_record, tag, outcome, sqlstate, rows,
                                    masked, 0, error, duration)
                    templates.append(key, build, _STATEMENT_HOLES, holes, wake=False)
                return
        except AuditUnavailable:
            pass  # (a full backlog: owed below, past it)
        except AuditError as e:
            logs.error("audit.append_failed", session=self.id, error=str(e))
            return
        self._audit(self._statement_record(tag, outcome, sqlstate, rows, masked,
                                           safety_net_hits, error, duration), wake=False,
                    owed=True)

    def _statement_record(self, tag: StatementTag, outcome: str, sqlstate: str | None,
                          rows: int | None, masked: dict[str, int], safety_net_hits: int,
                          error: str | None, duration: int | None) -> dict[str, Any]:
        assert self.audit_ctx is not None
        return records.statement_record(
            self.audit_ctx, decision_seq=tag.decision_seq, outcome=outcome,
            command=tag.command, sqlstate=sqlstate, rows=rows,
            masked_values=sum(masked.values()), masked_columns=sorted(masked),
            safety_net_hits=safety_net_hits, error=error, duration_us=duration)

    def _token_expired(self) -> None:
        logs.info("session.token_expired", session=self.id,
                  subject=self.identity.subject if self.identity else None)
        if self.relay is not None:
            self.terminate("28000", "the token this session logged in with has expired; "
                           "reconnect with a fresh token")

    def _cancel_running(self) -> None:
        """A session the gateway ends stops working at the server too: what runs there is
        canceled (the Terminate the relay sends waits behind it, and a write would still
        commit after the client was told the session is over)."""
        relay, cancel = self.relay, self._cancel_upstream
        if relay is None or cancel is None or relay.idle():
            return

        async def cancelling() -> None:
            try:
                await cancel()
            except Exception as e:  # (the Terminate still ends it once it is done)
                logs.warning("session.cancel_on_end_failed", session=self.id,
                             error=type(e).__name__)

        self._cancelling = asyncio.ensure_future(cancelling())
        logs.info("session.cancel_on_end", session=self.id)

    def _cancel_action(self, link: up.UpstreamLink) -> CancelAction:
        target = self.server.target(self.connection_name or "")
        key = link.key

        async def cancel() -> None:
            gate = self.relay.gate if self.relay is not None else None
            if gate is not None and gate.cancel_hold():  # type: ignore[attr-defined]
                logs.info("session.cancel_withdrew_hold", session=self.id)
                return  # the held statement never reached the database
            if key is None:
                return
            await up.send_cancel(target, key)
            logs.info("session.cancel_forwarded", session=self.id)

        return cancel

    def _fatal(self, code: str, message: str) -> None:
        # (it may quote a startup parameter: not behind the relay's safety net yet)
        self.client.write(be.ErrorResponse.build(code, scrub(message), "FATAL").encode())
