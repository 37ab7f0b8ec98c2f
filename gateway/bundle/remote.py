"""Fetching a bundle over HTTP(S) with ``ETag``/``If-None-Match`` (OPA's bundle service).

``fetch(url, etag)`` → :class:`Fetched` with ``status`` 200 (new bytes) or 304 (not
modified). The body is capped (:data:`MAX_DOWNLOAD_BYTES`); any network or HTTP error is
a :class:`FetchError`. Blocking (urllib): the reloader calls it from a worker thread.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass

from gateway.bundle.errors import BundleError

__all__ = ["MAX_DOWNLOAD_BYTES", "FetchError", "Fetched", "fetch", "is_url"]

MAX_DOWNLOAD_BYTES = 128 * 1024 * 1024


class FetchError(BundleError):
    """The bundle server could not be reached or answered with an error."""


@dataclass(frozen=True)
class Fetched:
    status: int  # 200 or 304
    raw: bytes | None
    etag: str | None


def is_url(location: str) -> bool:
    return location.lower().startswith(("http://", "https://"))


def fetch(url: str, etag: str | None = None, *, timeout: float = 10.0,
          max_bytes: int = MAX_DOWNLOAD_BYTES) -> Fetched:
    headers = {"Accept": "application/gzip, application/octet-stream"}
    if etag:
        headers["If-None-Match"] = etag
    req = urllib.request.Request(url, headers=headers)  # noqa: S310 - http(s) checked by caller
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            raw = resp.read(max_bytes + 1)
            if len(raw) > max_bytes:
                raise FetchError(url, f"bundle larger than {max_bytes} bytes")
            return Fetched(resp.status, raw, resp.headers.get("ETag"))
    except urllib.error.HTTPError as exc:
        if exc.code == 304:
            return Fetched(304, None, exc.headers.get("ETag") or etag)
        raise FetchError(url, f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise FetchError(url, f"unreachable: {exc.reason}") from None
    except (OSError, ValueError) as exc:
        raise FetchError(url, f"download failed: {exc}") from None
