"""Hot reload of the gateway's policy bundle: verify → compile → (test) → atomic swap.

One :class:`BundleReloader` per worker process (each worker has its own engine, handles
SIGHUP and polls by itself). ``reload_now(trigger)`` is the whole pipeline and is safe
to call from any thread (the admin API, SIGHUP through the event loop, the poller):

1. read the bundle: a file or directory (re-read), or an http(s) URL fetched with
   ``If-None-Match`` (304 → unchanged);
2. same sha256 as the active bundle → unchanged;
3. verify (the verification key file is re-read each time, so a rotated key needs no
   restart), parse, enforce roots, compile with ``PolicyEngine(probe=True)``, and, with
   ``policy.run_tests``, run the bundle's own ``test_`` rules;
4. swap: one attribute assignment (``activate(engine)``). A statement reads the engine
   once (``StatementGate`` calls ``policy()`` per query string), so every statement is
   decided wholly by one bundle; sessions are not touched.

A bundle that fails any step is rejected: the reason is logged (``bundle.rejected``)
and passed to ``on_event("bundle_rejected", ...)``; the active engine keeps serving.
Every activated bundle's raw bytes are archived as ``<state>/bundles/<sha256>.tar.gz``
(so an auditor can fetch the exact policy any decision names) and persisted as
``<state>/last-good.tar.gz`` (+ ``last-good.json``: location, ETag, revision); when the
bundle server cannot be reached (or serves a bad bundle) at start-up, the persisted copy
— verified again — is used and polling continues.

Polling (``policy.poll_interval`` seconds, 0 = off): a file/directory is re-read when its
stat signature (names, sizes, mtimes) changes; a URL is fetched with its ETag, and after
a failure the delay doubles (with jitter) up to ``MAX_BACKOFF``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway import logs
from gateway.bundle import remote
from gateway.bundle.errors import BundleError
from gateway.bundle.loader import LoadedBundle, load_bundle, load_bundle_bytes
from gateway.bundle.signing import KeyFileError, load_public_key
from gateway.bundle.verify import VerificationConfig
from gateway.config.model import PolicyConfig
from gateway.policy.engine import PolicyEngine
from gateway.policy.errors import PolicyError

__all__ = ["MAX_BACKOFF", "BundleReloader", "BundleStartupError", "ReloadResult"]

MAX_BACKOFF = 300.0
EventHook = Callable[[str, dict[str, Any]], None]


class BundleStartupError(Exception):
    """No usable bundle at start-up (and no persisted copy to fall back on)."""


@dataclass(frozen=True)
class ReloadResult:
    status: str  # "activated" | "unchanged" | "rejected" | "unavailable"
    trigger: str
    revision: str | None = None  # of the bundle now serving
    sha256: str | None = None
    reason: str | None = None  # why rejected / unavailable
    file: str | None = None  # the file at fault, when known

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class _Active:
    bundle: LoadedBundle
    engine: PolicyEngine
    activated_at: float


class BundleReloader:
    def __init__(
        self,
        config: PolicyConfig,
        *,
        base_dir: Path,
        activate: Callable[[PolicyEngine], None],
        on_event: EventHook | None = None,
        worker_id: int = 0,
    ) -> None:
        self.config = config
        self.location = config.bundle
        self.is_url = remote.is_url(config.bundle)
        self.state_dir = config.state_dir or (base_dir / "state")
        self._activate = activate
        self.on_event = on_event
        self.worker_id = worker_id
        self._lock = threading.Lock()
        self._active: _Active | None = None
        self._etag: str | None = None
        self._stat: object = None
        # The bundle last rejected, with the verification key it was checked with: the
        # same bytes are not checked again until the key file changes (a rotated key).
        self._rejected_sha: tuple[str, bytes | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Future[Any]] = set()
        # Counters (status, tests).
        self.activations = 0
        self.rejections = 0
        self.not_modified = 0
        self.failures = 0

    # -- state ------------------------------------------------------------------------------

    @property
    def engine(self) -> PolicyEngine | None:
        return self._active.engine if self._active else None

    @property
    def revision(self) -> str | None:
        return self._active.bundle.revision if self._active else None

    @property
    def sha256(self) -> str | None:
        return self._active.bundle.sha256 if self._active else None

    def status(self) -> dict[str, Any]:
        """For the admin API: what is serving and what happened."""
        return {"location": self.location, "revision": self.revision, "sha256": self.sha256,
                "activated_at": self._active.activated_at if self._active else None,
                "activations": self.activations, "rejections": self.rejections,
                "not_modified": self.not_modified, "failures": self.failures}

    def archive_path(self, sha256: str) -> Path:
        return self.state_dir / "bundles" / f"{sha256}.tar.gz"

    # -- start-up ---------------------------------------------------------------------------

    def load_initial(self) -> PolicyEngine:
        """Load and activate the configured bundle, or the persisted last good copy when
        a URL cannot be fetched or serves a bad bundle. Raises BundleStartupError."""
        result = self.reload_now("startup")
        if result.status == "activated":
            assert self._active is not None
            return self._active.engine
        why = f"{result.file}: {result.reason}" if result.file else str(result.reason)
        if self.is_url:
            persisted = self._load_persisted()
            if persisted is not None:
                return persisted
        raise BundleStartupError(f"policy bundle {self.location}: {why}")

    def _load_persisted(self) -> PolicyEngine | None:
        raw_path = self.state_dir / "last-good.tar.gz"
        try:
            meta = json.loads((self.state_dir / "last-good.json").read_text())
            raw = raw_path.read_bytes()
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or meta.get("location") != self.location:
            return None
        with self._lock:
            try:
                bundle = load_bundle_bytes(raw, f"{self.location} (persisted)",
                                           verification=self._verification(),
                                           allow_unsigned=self.config.allow_unsigned)
                engine = self._compile(bundle)
            except (BundleError, PolicyError, KeyFileError) as exc:
                logs.error("bundle.persisted_unusable", worker=self.worker_id,
                           error=str(exc))
                return None
            except Exception as exc:  # (whatever it is: the next source is tried)
                logs.error("bundle.persisted_unusable", worker=self.worker_id,
                           error=str(_Unexpected(exc)))
                return None
            self._etag = meta.get("etag") if isinstance(meta.get("etag"), str) else None
            self._swap(bundle, engine, "persisted")
        logs.warning("bundle.using_persisted", worker=self.worker_id, revision=bundle.revision,
                     sha256=bundle.sha256, location=self.location)
        return engine

    # -- the pipeline -----------------------------------------------------------------------

    def _verification(self, pem: bytes | None = None) -> VerificationConfig | None:
        """The bundle check, with the key file's bytes `pem` when read already."""
        path = self.config.verification_key
        if path is None:
            return None
        return VerificationConfig(load_public_key(pem if pem is not None else path),
                                  keyid=self.config.keyid, scope=self.config.scope)

    def _read_key(self) -> bytes | None:
        """The verification key file's bytes (None: none configured), read once per
        reload so that the key a bundle is checked with is the key its rejection is
        remembered under. Raises KeyFileError when it cannot be read."""
        path = self.config.verification_key
        if path is None:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise KeyFileError(f"{path}: cannot read: {exc.strerror or exc}") from None

    def reload_now(self, trigger: str = "admin") -> ReloadResult:
        """Check the bundle and activate it if it is new and good. Blocking; any thread."""
        with self._lock:
            return self._reload(trigger)

    def _reload(self, trigger: str) -> ReloadResult:
        current = self._active
        try:
            if self.is_url:
                fetched = remote.fetch(self.location, self._etag)
                if fetched.status == 304:
                    self.not_modified += 1
                    return self._result("unchanged", trigger)
                assert fetched.raw is not None
                raw: bytes | None = fetched.raw
            else:
                raw = None
                self._stat = self._stat_signature()
        except remote.FetchError as exc:
            self.failures += 1
            logs.warning("bundle.unavailable", worker=self.worker_id, trigger=trigger,
                         location=self.location, error=exc.reason)
            return self._result("unavailable", trigger, reason=exc.reason)
        sha = None
        unreadable: KeyFileError | None = None
        try:
            pem = self._read_key()
        except KeyFileError as exc:  # (reported as the rejection's reason below)
            pem, unreadable = None, exc
        # what identifies the key now (None: no key, or unreadable: then nothing is taken
        # for already rejected)
        key = hashlib.sha256(pem).digest() if pem is not None else None
        if raw is not None:
            sha = hashlib.sha256(raw).hexdigest()
            if (sha, key) == self._rejected_sha:
                return self._result("rejected", trigger, reason="already rejected")
        try:
            if unreadable is not None:
                raise unreadable
            verification = self._verification(pem)
            if raw is not None:
                bundle = load_bundle_bytes(raw, self.location, verification=verification,
                                           allow_unsigned=self.config.allow_unsigned)
            else:
                bundle = load_bundle(self.location, verification=verification,
                                     allow_unsigned=self.config.allow_unsigned)
            sha = bundle.sha256
            if current is not None and sha == current.bundle.sha256:
                self._rejected_sha = None
                if raw is not None:
                    self._etag = fetched.etag
                return self._result("unchanged", trigger)
            if (sha, key) == self._rejected_sha:
                return self._result("rejected", trigger, reason="already rejected")
            engine = self._compile(bundle)
        except (BundleError, PolicyError, KeyFileError) as exc:
            return self._reject(trigger, exc, sha, raw, key)
        except Exception as exc:  # a hostile bundle the checks did not expect: not active
            return self._reject(trigger, _Unexpected(exc), sha, raw, key)
        if raw is not None:  # (only now: a rejected download is fetched again, not a 304)
            self._etag = fetched.etag
        self._swap(bundle, engine, trigger)
        return self._result("activated", trigger)

    def _compile(self, bundle: LoadedBundle) -> PolicyEngine:
        engine = PolicyEngine(bundle.source, bundle_hash=bundle.sha256, probe=True)
        if self.config.run_tests:
            from gateway.policy.testing import run_source_tests

            results = run_source_tests(bundle.source, probe=True)
            bad = [r for r in results if r.status in ("fail", "error")]
            if bad:
                first = bad[0]
                raise PolicyError(first.location, f"bundle test {first.fqname} "
                                  f"{'failed' if first.status == 'fail' else 'errored'}"
                                  + (f" ({len(bad) - 1} more)" if len(bad) > 1 else ""))
        return engine

    def _swap(self, bundle: LoadedBundle, engine: PolicyEngine, trigger: str) -> None:
        previous = self._active
        self._active = _Active(bundle, engine, time.time())
        self._activate(engine)  # the swap: one attribute assignment
        self._rejected_sha = None
        self.activations += 1
        archived = self._persist(bundle)
        details = {
            "revision": bundle.revision, "sha256": bundle.sha256, "trigger": trigger,
            "location": self.location, "signed": bundle.signed,
            "keyid": bundle.signature.keyid if bundle.signature else None,
            "previous_revision": previous.bundle.revision if previous else None,
            "previous_sha256": previous.bundle.sha256 if previous else None,
            "archive": str(archived) if archived else None, "worker": self.worker_id,
            "compile_ms": round(engine.build_seconds * 1000, 1),
        }
        logs.info("bundle.activated", **details)
        self._emit("bundle_activated", details)

    def _reject(self, trigger: str, exc: Exception, sha: str | None, raw: bytes | None,
                key: bytes | None = None) -> ReloadResult:
        if isinstance(exc, BundleError):
            file, reason = exc.file, exc.reason
        elif isinstance(exc, PolicyError):
            file, reason = exc.location or None, exc.message
        elif isinstance(exc, _Unexpected):
            file, reason = None, str(exc)
        else:
            file, reason = str(self.config.verification_key), str(exc)
        if sha is None and raw is not None:
            sha = hashlib.sha256(raw).hexdigest()
        if sha is None and not self.is_url:  # a tarball file that failed before its hash
            try:
                path = Path(self.location)
                if path.is_file():
                    sha = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                pass
        self._rejected_sha = (sha, key) if sha is not None else None
        self.rejections += 1
        details = {"trigger": trigger, "location": self.location, "file": file,
                   "reason": reason, "sha256": sha, "serving_revision": self.revision,
                   "serving_sha256": self.sha256, "worker": self.worker_id}
        logs.warning("bundle.rejected", **details)
        self._emit("bundle_rejected", details)
        return self._result("rejected", trigger, reason=reason, file=file)

    def _emit(self, kind: str, details: dict[str, Any]) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(kind, dict(details))
        except Exception as exc:  # an audit sink problem must not break the swap
            logs.error("bundle.event_hook_failed", kind=kind, error=type(exc).__name__)

    def _result(self, status: str, trigger: str, **kw: Any) -> ReloadResult:
        return ReloadResult(status, trigger, self.revision, self.sha256, **kw)

    # -- persistence ------------------------------------------------------------------------

    def _write_atomic(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def _persist(self, bundle: LoadedBundle) -> Path | None:
        archived = self.archive_path(bundle.sha256)
        try:
            if not archived.exists():
                self._write_atomic(archived, bundle.raw)
            self._write_atomic(self.state_dir / "last-good.tar.gz", bundle.raw)
            meta = {"location": self.location, "etag": self._etag,
                    "revision": bundle.revision, "sha256": bundle.sha256,
                    "saved_at": time.time()}
            self._write_atomic(self.state_dir / "last-good.json",
                               json.dumps(meta, indent=2).encode())
        except OSError as exc:
            logs.error("bundle.persist_failed", worker=self.worker_id,
                       state_dir=str(self.state_dir), error=exc.strerror or str(exc))
            return archived if archived.exists() else None
        return archived

    # -- change detection and polling -------------------------------------------------------

    def _stat_signature(self) -> object:
        path = Path(self.location)
        try:
            if not path.is_dir():
                st = path.stat()
                return (st.st_ino, st.st_size, st.st_mtime_ns)
            sig = []
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames.sort()
                for name in sorted(filenames):
                    st = os.lstat(os.path.join(dirpath, name))
                    sig.append((dirpath, name, st.st_size, st.st_mtime_ns))
            return tuple(sig)
        except OSError as exc:
            return ("error", exc.errno)

    def check(self, trigger: str = "poll") -> ReloadResult | None:
        """One poll: a URL is always asked (ETag); a file/directory only when its stat
        signature changed since the last read. None: nothing to do."""
        if not self.is_url and self._stat_signature() == self._stat:
            return None
        return self.reload_now(trigger if self.is_url else "file-change")

    def start(self) -> None:
        """Start polling on the running event loop (no-op when poll_interval is 0)."""
        if self.config.poll_interval > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.poll_interval
        delay = interval
        failures = 0
        while True:
            await asyncio.sleep(delay * random.uniform(0.9, 1.1))  # noqa: S311 - jitter
            try:
                result = await loop.run_in_executor(None, self.check, "poll")
            except Exception as exc:  # never let the poller die
                logs.error("bundle.poll_failed", worker=self.worker_id,
                           error=f"{type(exc).__name__}: {exc}")
                result = ReloadResult("unavailable", "poll")
            if result is not None and result.status == "unavailable":
                failures += 1
                delay = min(interval * 2 ** failures, max(MAX_BACKOFF, interval))
            else:
                failures = 0
                delay = interval

    def trigger(self, reason: str = "sighup") -> None:
        """Reload in a worker thread, from the event loop (a signal handler)."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(None, self.reload_now, reason)
        self._pending.add(fut)
        fut.add_done_callback(self._pending.discard)

    async def reload(self, trigger: str = "admin") -> ReloadResult:
        """``reload_now`` without blocking the event loop (for the admin API)."""
        return await asyncio.get_running_loop().run_in_executor(None, self.reload_now,
                                                                trigger)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class _Unexpected(Exception):
    """A bundle that failed in a way no check names (its class only: its text may quote
    the bundle)."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(f"the bundle could not be loaded ({type(exc).__name__})")
