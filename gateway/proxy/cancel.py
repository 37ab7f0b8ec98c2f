"""Cancel keys the gateway hands to clients, mapped to the sessions that own them.

The client gets the gateway's own (pid, secret); the upstream key never leaves the
gateway. The top byte of the pid names the worker process, so a cancel request that
lands on another worker (SO_REUSEPORT spreads connections) can be routed to its owner.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable

from gateway.config.model import MAX_WORKERS
from gateway.wire.backend import BackendKeyData

CancelAction = Callable[[], Awaitable[None]]


class CancelRegistry:
    def __init__(self, worker_id: int = 0) -> None:
        if not 0 <= worker_id < MAX_WORKERS:
            raise ValueError("worker id must fit in the pid's top byte")
        self.worker_id = worker_id
        self._keys: dict[int, tuple[bytes, CancelAction]] = {}

    def register(self, action: CancelAction) -> BackendKeyData:
        while True:
            pid = (self.worker_id << 24) | secrets.randbelow(1 << 24)
            if pid and pid not in self._keys:
                break
        secret = secrets.token_bytes(4)
        self._keys[pid] = (secret, action)
        return BackendKeyData(pid, secret)

    def unregister(self, pid: int) -> None:
        self._keys.pop(pid, None)

    def lookup(self, pid: int, secret: bytes) -> CancelAction | None:
        entry = self._keys.get(pid)
        if entry is None or not hmac.compare_digest(entry[0], secret):
            return None
        return entry[1]

    @staticmethod
    def worker_of(pid: int) -> int:
        return (pid >> 24) & 0x7F

    def __len__(self) -> int:
        return len(self._keys)
