"""A gate's Split: the frames before the split go out, the rest waits, then is shown to
the gate again, in order, ahead of what the client sent meanwhile (a message cut across
reads included). Real sockets on loopback and a real event loop carry the bytes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from test_relay_failures import _started_relay

from gateway.proxy.relay import Relay, Split
from gateway.wire import backend as be
from gateway.wire.framing import Frame


def _query(sql: str) -> bytes:
    body = sql.encode() + b"\x00"
    return b"Q" + (len(body) + 4).to_bytes(4, "big") + body


class SplittingGate:
    """Splits the first batch it sees before its frame `at`; passes everything else."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.seen: list[list[bytes]] = []
        self.release: asyncio.Future[None] | None = None
        self.waited_after: list[int] = []  # syncs forwarded when until() was called

    def review(self, raw: bytes, frames: list[Frame], relay: Relay) -> bytes | Split:
        self.seen.append([body for _, body in frames])
        if len(self.seen) > 1:
            return raw
        self.release = asyncio.get_running_loop().create_future()
        cut = sum(5 + len(body) for _, body in frames[: self.at])

        def until() -> asyncio.Future[None]:
            self.waited_after.append(relay.syncs_forwarded)
            assert self.release is not None
            return self.release

        return Split(self.at, raw[:cut], until)

    def parameter_status(self, name: str, value: str) -> None:
        pass

    def ready_for_query(self, status: str, idle: Callable[[], bool]) -> None:
        pass

    def take_tags(self, frames: list[Frame]) -> tuple[list[Frame], dict[int, Any]]:
        return frames, {}


def test_the_rest_of_a_split_batch_waits_and_keeps_its_place() -> None:
    q = [_query(f"select {n}") for n in range(1, 6)]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        gate = SplittingGate(at=2)
        relay, (client_r, client_w), (upstream_r, upstream_w) = await _started_relay(
            loop, gate=gate)
        # three whole messages and the start of a fourth in one read
        client_w.write(q[0] + q[1] + q[2] + q[3][:3])
        head = q[0] + q[1]
        assert await asyncio.wait_for(upstream_r.readexactly(len(head)), 5) == head
        assert gate.waited_after == [2]  # until() once the prefix went out
        # the rest of the fourth and a fifth arrive while the split waits
        client_w.write(q[3][3:] + q[4])
        await asyncio.sleep(0.2)
        ready = be.ReadyForQuery("I").encode()
        upstream_w.write(ready)  # answers still flow to the client meanwhile
        assert await asyncio.wait_for(client_r.readexactly(len(ready)), 5) == ready
        with_nothing = asyncio.ensure_future(upstream_r.read(1))
        await asyncio.sleep(0.2)
        assert not with_nothing.done()  # nothing more went upstream
        assert gate.release is not None
        gate.release.set_result(None)
        rest = q[2] + q[3] + q[4]
        got = await asyncio.wait_for(with_nothing, 5)
        got += await asyncio.wait_for(upstream_r.readexactly(len(rest) - 1), 5)
        assert got == rest
        # the gate saw every message once, in order (the split ones again)
        seen = [body for batch in gate.seen for body in batch]
        assert seen == [m[5:] for m in q[:3]] + [m[5:] for m in q[2:]]
        assert relay.messages_from_client == 5
        assert relay.syncs_forwarded == 5 and relay.syncs_answered == 1
        for w in (client_w, upstream_w):
            w.close()
        await asyncio.wait_for(relay.done, 5)

    asyncio.run(main())


def test_when_answered_follows_the_ready_for_query_count() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        relay, (_client_r, client_w), (upstream_r, upstream_w) = await _started_relay(loop)
        client_w.write(_query("select 1") + _query("select 2"))
        await asyncio.wait_for(upstream_r.readexactly(2 * len(_query("select 1"))), 5)
        first, second = relay.when_answered(1), relay.when_answered(2)
        assert not first.done() and not second.done()
        upstream_w.write(be.ReadyForQuery("I").encode())
        await asyncio.wait_for(first, 5)
        assert not second.done()
        client_w.close()  # the session ends: nobody waits for ever
        await asyncio.wait_for(second, 5)
        upstream_w.close()

    asyncio.run(main())
