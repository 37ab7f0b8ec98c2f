"""An exception nobody expected while relaying ends that one session, fail closed.

Real sockets on loopback and a real event loop carry the bytes; the fault is a relay
stage made to raise, standing for a bug or bytes no stage foresaw.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from typing import Any

import pytest

from gateway import logs
from gateway.proxy.endpoint import Endpoint
from gateway.proxy.relay import Relay
from gateway.wire import backend as be


async def _pair(loop: asyncio.AbstractEventLoop
                ) -> tuple[Endpoint, asyncio.StreamReader, asyncio.StreamWriter]:
    """An Endpoint on the gateway's side of a loopback connection, and the far end."""
    accepted: asyncio.Future[Endpoint] = loop.create_future()

    def factory() -> Endpoint:
        ep = Endpoint()
        loop.call_soon(accepted.set_result, ep)
        return ep

    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    ep = await accepted
    server.close()
    return ep, reader, writer


Ends = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _started_relay(loop: asyncio.AbstractEventLoop, **options: Any
                         ) -> tuple[Relay, Ends, Ends]:
    """A started Relay between two loopback connections (`options`: Relay's; the safety
    net off unless given), and the far ends of its client and upstream sides."""
    client_ep, client_r, client_w = await _pair(loop)
    upstream_ep, upstream_r, upstream_w = await _pair(loop)
    relay = Relay("s1", client_ep, upstream_ep, 1 << 20, **{"safety_net": "off", **options})
    relay.start()
    return relay, (client_r, client_w), (upstream_r, upstream_w)


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), 10)


async def _ended_by(make_relay: Callable[[Endpoint, Endpoint], Relay], upstream: bytes
                    ) -> bytes:
    """What the client got from a relay (made by `make_relay` over loopback) when the
    server sent `upstream` and that ended the session."""
    loop = asyncio.get_running_loop()
    client_ep, client_r, client_w = await _pair(loop)
    upstream_ep, _upstream_r, upstream_w = await _pair(loop)
    relay = make_relay(client_ep, upstream_ep)
    relay.start()
    upstream_w.write(upstream)
    await asyncio.wait_for(relay.done, 5)
    out = await _read_all(client_r)
    for w in (client_w, upstream_w):
        w.close()
    return out


@pytest.mark.parametrize("side", ["upstream", "client"])
def test_a_failing_stage_ends_only_its_session_and_forwards_nothing(side: str) -> None:
    stream = io.StringIO()
    logs.configure("info", stream)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        relay, (client_r, client_w), (upstream_r, upstream_w) = await _started_relay(loop)
        # one good round trip first: the relay works
        query = b"Q\x00\x00\x00\x0dselect 1\x00"
        client_w.write(query)
        assert await asyncio.wait_for(upstream_r.readexactly(len(query)), 5) == query
        ready = be.ReadyForQuery("I").encode()
        upstream_w.write(ready)
        assert await asyncio.wait_for(client_r.readexactly(len(ready)), 5) == ready

        def broken(_data: bytes) -> object:
            raise RuntimeError("secret 4111111111111111 in a message")

        secret = be.CommandComplete("SELECT 4111111111111111").encode()
        if side == "upstream":
            relay.observer.relay = broken  # type: ignore[method-assign]
            upstream_w.write(secret)
        else:
            relay.framer.feed = broken  # type: ignore[method-assign]
            client_w.write(b"Q\x00\x00\x00\x0esecret 1\x00")
        assert await asyncio.wait_for(relay.done, 5)
        to_client = await _read_all(client_r)
        to_upstream = await _read_all(upstream_r)
        assert b"4111111111111111" not in to_client and b"secret" not in to_upstream
        # the client learns why, as an ErrorResponse, when its stream is between messages
        assert b"XX000" in to_client and b"internal gateway error" in to_client
        for w in (client_w, upstream_w):
            w.close()
        # the loop itself is fine: another task still runs
        assert await asyncio.sleep(0, "alive") == "alive"

    asyncio.run(main())
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    failed = [e for e in events if e.get("event") == "session.internal_error"]
    assert failed and failed[0]["error"] == "RuntimeError"
    assert failed[0]["where"].startswith("test_relay_failures.py:")
    assert "4111111111111111" not in stream.getvalue()  # where, never what


@pytest.mark.parametrize("audited", [False, True])
def test_an_answer_nothing_explains_ends_the_session_with_its_reason(audited: bool) -> None:
    """Followed results (a ResultMasker), with or without audit records: an upstream
    answer to no request ends the session as untrackable, not as an internal error."""
    from gateway.masking.results import ResultMasker

    def make(client: Endpoint, upstream: Endpoint) -> Relay:
        return Relay("s1", client, upstream, 1 << 20, safety_net="mask",
                     results=ResultMasker(lambda o, a: None),
                     on_result=(lambda *a: None) if audited else None)

    out = asyncio.run(_ended_by(make, be.ReadyForQuery("I").encode()))  # nobody asked
    assert b"could not follow this result safely" in out


def test_safety_net_hits_go_to_the_result_whose_bytes_held_them() -> None:
    """The arithmetic behind a statement record's `safety_net_hits`: a hit belongs to the
    first result ending at or after it, in the bytes the client got — after the masks'
    splices (which change lengths) and behind bytes the net held back from the read
    before; hits after the last ended result wait for the next one."""
    got: list[tuple[str, int]] = []

    async def main() -> None:
        relay = Relay("s1", Endpoint(), Endpoint(), 1 << 20, safety_net="mask",
                      on_result=lambda tag, t, b, c, hits, sent: got.append((tag, hits)))
        # results ending at 100 and 300 of the upstream's buffer; a mask shrank bytes
        # 40..60 of it to 4 bytes (-16) and 150..250 to nothing (-100); 5 bytes held back
        ended = [(100, "A", 0, b"", {}, 0), (300, "B", 0, b"", {}, 0)]
        swaps = [(40, 60, b"xxxx"), (150, 250, b"")]
        # in the client's bytes, A's end is at 5 + 100 - 16 = 89, B's at 89 + 200 - 100
        relay._deliver(ended, relay._place_hits(ended, swaps, 5, [3, 89, 90, 189, 190]))
        assert got == [("A", 2), ("B", 2)]
        assert relay.take_carried_hits() == 1  # 190: in a result still streaming
        relay._carried_hits = 1
        ended = [(10, "C", 0, b"", {}, 0)]
        relay._deliver(ended, relay._place_hits(ended, [], 0, []))
        assert got[-1] == ("C", 1)

    asyncio.run(main())


@pytest.mark.parametrize("reads", [2, 3])
def test_hits_in_reads_before_a_result_ends_count_for_that_result(reads: int) -> None:
    """A result streamed over several reads: the card numbers the net masked in a read
    where no result ended are in the result still streaming, and its record counts them
    with those of the read it ends in."""
    got: list[tuple[str | None, int]] = []

    async def main() -> None:
        relay = _tagged_relay(Endpoint(), Endpoint(), "mask",
                              lambda tag, t, b, c, hits, sent: got.append((tag.command, hits)))
        field = be.RowDescriptionField("pan", 0, 0, 25, -1, -1, 0)
        # (a row after each card number's, so that the net holds no digits back)
        other = be.DataRow((b"n/a",)).encode()
        relay.from_upstream(be.RowDescription((field,)).encode()
                            + be.DataRow((b"4111111111111111",)).encode() + other)
        for _ in range(reads - 2):
            relay.from_upstream(be.DataRow((b"4012888888881881",)).encode() + other)
        relay.from_upstream(be.DataRow((b"5500000000000004",)).encode() + _ANSWER)
        assert relay.take_carried_hits() == 0

    asyncio.run(main())
    assert got == [("A", reads)]


@pytest.mark.parametrize("followed_by", ["masker", "relay"])
def test_rows_of_a_result_still_streaming_are_there_for_its_unfinished_record(
        followed_by: str) -> None:
    """A session can end in the middle of a result: the rows sent so far (a row whose
    header has gone out included) are what its `unfinished` record reports, whether the
    masker follows the statement or the relay itself (rows stepped over in C)."""
    from gateway.masking.results import WATCH_ENDS, ResultMasker, StatementTag

    got: list[object] = []

    async def main() -> None:
        if followed_by == "masker":
            relay = _tagged_relay(Endpoint(), Endpoint(), "mask", lambda *a: got.append(a))
        else:  # as Relay._forward leaves a lone Query it follows itself
            relay = Relay("s1", Endpoint(), Endpoint(), 1 << 20, safety_net="mask",
                          results=ResultMasker(lambda o, a: None),
                          on_result=lambda *a: got.append(a))
            relay._outstanding = relay._quiet = 1
            relay._quiet_tag = StatementTag(command="A")
            relay._observe(WATCH_ENDS)
        field = be.RowDescriptionField("n", 0, 0, 25, -1, -1, 0)
        row = be.DataRow((b"x" * 50,)).encode()
        relay.from_upstream(be.RowDescription((field,)).encode() + row * 2)
        relay.from_upstream(row + row[:20])
        assert [t.command for t in relay.unfinished()] == ["A"]
        assert relay.take_sent() == 4 and relay.take_sent() == 0

    asyncio.run(main())
    assert got == []


def test_a_result_that_ended_before_a_failure_still_gets_its_record() -> None:
    """A stage fails after the buffer's accounting: the session ends (fail closed), but
    the statement whose result ended in that buffer is still reported, once, with the
    safety-net hits of its earlier reads."""
    from gateway.masking.results import ResultMasker, StatementTag
    from gateway.masking.safety_net import StreamScanner
    from gateway.wire import frontend as fe

    got: list[tuple[str | None, int, int]] = []

    class Broken(StreamScanner):
        def feed(self, chunk: bytes) -> bytes:
            raise RuntimeError("a stage after the accounting")

    def make(client: Endpoint, upstream: Endpoint) -> Relay:
        results = ResultMasker(lambda o, a: None)
        relay = Relay("s1", client, upstream, 1 << 20, safety_net="mask", results=results,
                      on_result=lambda tag, t, b, c, hits, sent: got.append((tag.command, t, hits)))
        query = fe.Query("select 1").encode()
        # as Relay._forward does for a tagged Query
        results.forwarded([(query[0], query[5:])], {0: [StatementTag(command="A")]})
        relay._outstanding = 1
        relay._observe(results.watch())
        relay.safety = Broken()
        relay._carried_hits = 1  # a card number masked in an earlier read of its result
        return relay

    out = asyncio.run(_ended_by(make, be.CommandComplete("SELECT 1").encode()
                                + be.ReadyForQuery("I").encode()))
    assert got == [("A", ord("C"), 1)]
    assert b"internal gateway error" in out


def _tagged_relay(client: Endpoint, upstream: Endpoint, safety_net: str,
                  on_result: Callable[..., None]) -> Relay:
    """A relay following one forwarded Query with a statement tag ("A"), as
    Relay._forward leaves it for a tagged Query."""
    from gateway.masking.results import ResultMasker, StatementTag
    from gateway.wire import frontend as fe

    results = ResultMasker(lambda o, a: None)
    relay = Relay("s1", client, upstream, 1 << 20, safety_net=safety_net, results=results,
                  on_result=on_result)
    query = fe.Query("select 1").encode()
    results.forwarded([(query[0], query[5:])], {0: [StatementTag(command="A")]})
    relay._outstanding = 1
    relay._observe(results.watch())
    return relay


_ANSWER = be.CommandComplete("SELECT 1").encode() + be.ReadyForQuery("I").encode()


_CARD_ROW = be.DataRow((b"4111111111111111",)).encode()


@pytest.mark.parametrize(("safety_net", "answer", "hits"),
                         [("mask", _ANSWER, 0), ("off", _ANSWER, 0),
                          ("mask", _CARD_ROW + _ANSWER, 1)],
                         ids=["net", "no net", "net with a hit to place"])
def test_a_statement_is_reported_once_its_answer_is_passed_on(safety_net: str, answer: bytes,
                                                              hits: int) -> None:
    """The completion record is not what the client waits for: the answer goes out
    first, then the relay reports the statement's end (with a hit the net masked in
    its result placed too)."""
    order: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        client_ep, client_r, client_w = await _pair(loop)
        upstream_ep, _upstream_r, upstream_w = await _pair(loop)
        reported = loop.create_future()

        def on_result(tag: object, t: int, b: bytes, c: object, placed: int, sent: int) -> None:
            order.append(f"reported with {placed} hit(s)")
            reported.set_result(t)

        relay = _tagged_relay(client_ep, upstream_ep, safety_net, on_result)
        write = client_ep.write
        client_ep.write = lambda data: (order.append("to client"), write(data))[1]  # type: ignore[method-assign]
        relay.start()
        upstream_w.write(answer)
        assert await asyncio.wait_for(reported, 5) == ord("C")
        got = await asyncio.wait_for(client_r.readexactly(len(answer)), 5)
        assert len(got) == len(answer) and b"4111111111111111" not in got  # (masked)
        for w in (client_w, upstream_w):
            w.close()

    asyncio.run(main())
    assert order == ["to client", f"reported with {hits} hit(s)"]


def test_a_session_the_net_stops_still_reports_the_statement_with_its_hit() -> None:
    """safety_net: error ends the session on a card number in a result: the client gets
    none of it, only the FATAL error, and the statement is reported once, with its hit."""
    got: list[tuple[str | None, int, int]] = []

    def make(client: Endpoint, upstream: Endpoint) -> Relay:
        return _tagged_relay(client, upstream, "error",
                             lambda tag, t, b, c, hits, sent: got.append((tag.command, t, hits)))

    out = asyncio.run(_ended_by(make, _CARD_ROW + _ANSWER))
    assert got == [("A", ord("C"), 1)]
    assert b"4111111111111111" not in out and b"safety_net: error" in out


@pytest.mark.parametrize("safety_net", ["mask", "off"])
def test_an_answer_that_cannot_be_passed_on_still_leaves_its_record(safety_net: str) -> None:
    """Writing to the client fails after the statement ended: the session ends, and the
    statement is still reported, once."""
    got: list[tuple[str | None, int]] = []

    def make(client: Endpoint, upstream: Endpoint) -> Relay:
        relay = _tagged_relay(client, upstream, safety_net,
                              lambda tag, t, b, c, hits, sent: got.append((tag.command, t)))

        write, calls = client.write, []

        def broken(data: bytes) -> None:  # the answer fails; the session's error goes out
            calls.append(data)
            if len(calls) == 1:
                raise RuntimeError("the client's transport failed")
            write(data)

        client.write = broken  # type: ignore[method-assign]
        return relay

    out = asyncio.run(_ended_by(make, _ANSWER))
    assert got == [("A", ord("C"))]
    assert b"internal gateway error" in out


def test_reading_resumes_only_once_no_reason_to_pause_is_left() -> None:
    """A client's reading is paused for several reasons at once (the upstream's buffer is
    full, a backlog behind a held statement, requests in flight); lifting one must not
    resume it while another holds (each used to resume the transport outright)."""
    from gateway.devtools.transports import MemoryTransport

    client, upstream = Endpoint(), Endpoint()
    client.transport = MemoryTransport()  # type: ignore[assignment]
    client.peer, upstream.peer = upstream, client
    wire = client.transport
    upstream.pause_writing()  # the upstream's write buffer is full
    client.hold_reading("in_flight")
    assert not wire.reading  # type: ignore[attr-defined]
    upstream.resume_writing()
    assert not wire.reading  # type: ignore[attr-defined]  (still in flight)
    client.release_reading("in_flight")
    assert wire.reading  # type: ignore[attr-defined]
    client.release_reading("backlog")  # not held: nothing happens
    assert wire.reading  # type: ignore[attr-defined]


def test_a_client_pipelining_without_reading_is_paused_at_the_in_flight_limit() -> None:
    """Requests forwarded and not answered are held to IN_FLIGHT_MAX: past it reading from
    the client pauses, and answers let it go on. (Found by a probe of leaks and limits:
    a client pipelining `select 1` without reading grew the gateway by 250 MB.)"""
    from gateway.devtools.transports import MemoryTransport
    from gateway.proxy.relay import IN_FLIGHT_MAX, Relay
    from gateway.wire import backend as be
    from gateway.wire.frontend import Query

    async def run() -> None:
        client, upstream = Endpoint(), Endpoint()
        client.transport = MemoryTransport()  # type: ignore[assignment]
        upstream.transport = MemoryTransport(keep=False)  # type: ignore[assignment]
        relay = Relay("s1", client, upstream, 1 << 20, None, safety_net="off")
        relay.start()
        query = Query("select 1").encode()
        for _ in range(IN_FLIGHT_MAX - 1):
            relay.from_client(query)
        assert client.transport.reading  # type: ignore[union-attr]
        relay.from_client(query * 10)  # (as it came in one read)
        assert not client.transport.reading  # type: ignore[union-attr]
        answer = be.CommandComplete("SELECT 1").encode() + be.ReadyForQuery("I").encode()
        relay.from_upstream(answer * (IN_FLIGHT_MAX // 2))
        assert not client.transport.reading  # type: ignore[union-attr]  (not below half)
        relay.from_upstream(answer * 20)
        assert client.transport.reading  # type: ignore[union-attr]

    asyncio.run(run())
