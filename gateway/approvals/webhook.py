"""Fire-and-forget webhook: approval requests and resolutions POSTed as JSON.

Each delivery is a POST of ``{"event", "delivery", "sent_at", "data"}`` with
``Content-Type: application/json`` and, when a secret is configured,
``X-Pgwarden-Signature: sha256=<hex HMAC-SHA256 of the exact body>``; receivers
recompute it over the raw body and compare in constant time (``sent_at`` inside the
signed body lets them refuse replays).

:meth:`WebhookNotifier.notify` only puts the event on a bounded queue and returns:
nothing on the data path ever waits for the receiver. One background task delivers in
order, each attempt bounded by ``timeout``, retried ``retries`` times with doubling
backoff on connection errors, 408, 429 and 5xx; a full queue drops the new event (and
logs it). The event carries no raw SQL: approval summaries hold the redacted text only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gateway import logs
from gateway.audit.redact import scrub_value

from .model import rfc3339

__all__ = ["WebhookNotifier", "sign"]

_RETRYABLE_STATUS = {408, 429}


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Pgwarden-Signature`` header value for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirected POST would be re-sent somewhere we were not told about


def _secret_bytes(secret: Any) -> bytes | None:
    if secret is None:
        return None
    if hasattr(secret, "reveal"):
        secret = secret.reveal()
    return secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)


class WebhookNotifier:
    def __init__(self, url: str, secret: Any = None, *, timeout: float = 5.0,
                 retries: int = 3, backoff: float = 0.5, max_queue: int = 1000,
                 clock: Any = None) -> None:
        if not url.lower().startswith(("http://", "https://")):
            raise ValueError("webhook url must be http:// or https://")
        self.url = url
        self._secret = _secret_bytes(secret)
        self.timeout = timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self._queue: asyncio.Queue[tuple[str, bytes, str]] = asyncio.Queue(max_queue)
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._opener = urllib.request.build_opener(_NoRedirect())
        self._clock = clock
        # Counters, for tests and metrics.
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    @classmethod
    def from_config(cls, webhook: Any) -> WebhookNotifier | None:
        """From a config object with ``url``, ``secret`` (Secret), optional ``timeout`` and
        ``retries`` — or None when there is none."""
        if webhook is None or not getattr(webhook, "url", None):
            return None
        return cls(webhook.url, getattr(webhook, "secret", None),
                   timeout=getattr(webhook, "timeout", 5.0),
                   retries=getattr(webhook, "retries", 3))

    def notify(self, event: str, data: dict[str, Any]) -> bool:
        """Queue one event; never blocks. False when it was dropped (queue full)."""
        import time

        now = self._clock() if self._clock else time.time()
        delivery = uuid.uuid4().hex
        # (reasons, subjects and groups are people's and tokens' text: no card number
        # leaves in a webhook, as none does in a record or a log line)
        clean, _ = scrub_value(data)
        body = json.dumps({"event": event, "delivery": delivery, "sent_at": rfc3339(now),
                           "data": clean}, separators=(",", ":"), default=str).encode()
        try:
            self._queue.put_nowait((event, body, delivery))
        except asyncio.QueueFull:
            self.dropped += 1
            logs.warning("approvals.webhook_dropped", event_kind=event, reason="queue full")
            return False
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return True

    async def _run(self) -> None:
        while True:
            event, body, delivery = await self._queue.get()
            try:
                await self._deliver(event, body, delivery)
            finally:
                self._queue.task_done()

    async def _deliver(self, event: str, body: bytes, delivery: str) -> None:
        loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="pgwarden-webhook")
        error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                status = await loop.run_in_executor(self._executor, self._post, event, body,
                                                    delivery)
            except (OSError, ValueError) as exc:  # URLError, timeouts, refused
                error = type(exc).__name__
                continue
            if 200 <= status < 300:
                self.delivered += 1
                return
            error = f"HTTP {status}"
            if status < 500 and status not in _RETRYABLE_STATUS:
                break
        self.failed += 1
        logs.warning("approvals.webhook_failed", event_kind=event, delivery=delivery,
                     error=error)

    def _post(self, event: str, body: bytes, delivery: str) -> int:
        headers = {"Content-Type": "application/json", "User-Agent": "pgwarden",
                   "X-Pgwarden-Event": event, "X-Pgwarden-Delivery": delivery}
        if self._secret is not None:
            headers["X-Pgwarden-Signature"] = sign(self._secret, body)
        req = urllib.request.Request(  # noqa: S310 - the scheme is checked in __init__
            self.url, data=body, headers=headers, method="POST")
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                resp.read(65536)
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            exc.close()
            return int(exc.code)

    async def drain(self, grace: float = 5.0) -> None:
        """Wait (bounded) until every queued event was attempted."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), grace)

    async def close(self, grace: float = 2.0) -> None:
        await self.drain(grace)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
