"""A required approval reason must carry visible text: one made only of zero-width
spaces, word joiners, the BOM, a soft hyphen, NUL or DEL was accepted, and the audit
trail and the requester's error then showed an empty justification."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from test_admin import admin_env, rpc_error

from gateway.admin import admin_pb2 as pb

INVISIBLE = ["\u200b", "\u2060\ufeff", "\u00ad", "\x00", "\x7f", " \u200b\u200c\u200d "]


@pytest.mark.parametrize("decision", ["Approve", "Deny"])
@pytest.mark.parametrize("reason", INVISIBLE, ids=[r.encode("unicode_escape").decode()
                                                    for r in INVISIBLE])
def test_an_invisible_reason_is_no_reason(tmp_path: Path, decision: str, reason: str) -> None:
    async def main() -> None:
        async with admin_env(tmp_path) as env:
            held = await env.hold()
            call = getattr(env.stub, decision)
            err = await rpc_error(call(pb.DecideRequest(id=held.id, reason=reason),
                                       metadata=env.md("alice", "dba")))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            still = await env.service.get_request(held.id)
            assert still is not None and still.status == "pending" and not still.votes

    asyncio.run(main())
