"""The policy engine: one compiled regopy bundle per policy version, decisions cached.

    source = PolicySource.load("policies/pci")          # or .from_files(verified bundle)
    engine = PolicyEngine(source)                        # compiles once (a few ms)
    decision = engine.decide(input_doc)                  # never raises; fails closed

Evaluation uses regopy's compiled fast path (``Interpreter.build`` +
``query_bundle_entrypoint``), not ``Interpreter.query`` on source modules, with input
objects handed over in the order the policy reads them (``runtime.KeyOrder``). A policy
gives most statements one of a few answers: each distinct answer text is parsed and
validated once (a bounded memo per engine), not once per statement.

Decision cache
--------------
An LRU (``cache_size`` entries, default 10,000) keyed by
``(policy content hash, entrypoint, key)``. ``key`` is either the caller's ``cache_key``
string (the caller vouches that equal keys mean equal decisions, e.g. DESIGN §8's
identity + statement fingerprint) or, by default, ``input_digest(input_doc)``: the
sha256 of the canonical JSON (sorted keys, no whitespace) of the whole input minus the
*volatile* fields (:data:`VOLATILE_FIELDS`: ``session.id``, ``session.started_at``,
``connection.client_addr``). A volatile field stays in the key when the policy mentions
its name (``client_addr``, ``started_at``, ``id``), so a policy that reads it is still
cached correctly.

The cache is bypassed entirely when the policy calls a non-deterministic builtin
(``time.now_ns``, ``rand.*``, ``http.send``..., see
``gaps.NONDETERMINISTIC_BUILTINS``): ``engine.deterministic`` is then False. Decisions
that carry an ``error`` are never cached.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.policy.decision import UNDEFINED, Decision, validate_decision
from gateway.policy.errors import PolicyCompileError
from gateway.policy.gaps import PolicyWarning, nondeterministic_calls, policy_gaps
from gateway.policy.runtime import (
    CompiledPolicy,
    EvalError,
    compile_policy,
    probe_compile,
    result_value,
)
from gateway.policy.source import DEFAULT_ENTRYPOINT, PolicySource, normalize_entrypoint

__all__ = [
    "DEFAULT_ENTRYPOINT",
    "UNDEFINED",
    "VOLATILE_FIELDS",
    "CacheInfo",
    "Decision",
    "DecisionCache",
    "PolicyEngine",
    "PolicySource",
    "input_digest",
]

# Input fields that change per session/connection without changing what a statement
# may do; left out of the default cache key unless the policy mentions them.
VOLATILE_FIELDS: tuple[tuple[str, ...], ...] = (
    ("session", "id"),
    ("session", "started_at"),
    ("connection", "client_addr"),
    # The text varies with every literal; policies decide on the analysis, not the text.
    ("statement", "sql"),
)


# Validated decisions by the engine's answer text (the text is all a Decision depends
# on, besides this engine's bundle names): bounded, cleared when full.
_TEXT_MEMO_SIZE = 256
_TEXT_MEMO_MAX_LEN = 4096


def _without(doc: Mapping[str, Any], paths: Sequence[tuple[str, ...]]) -> Mapping[str, Any]:
    """A shallow-copied view of ``doc`` with ``paths`` removed (copies only what it edits)."""
    if not paths:
        return doc
    out = dict(doc)
    for path in paths:
        node: Any = out
        for key in path[:-1]:
            child = node.get(key) if isinstance(node, dict) else None
            if not isinstance(child, Mapping):
                node = None
                break
            child = dict(child)
            node[key] = child
            node = child
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return out


def input_digest(
    input_doc: Mapping[str, Any], volatile: Sequence[tuple[str, ...]] = VOLATILE_FIELDS
) -> str:
    """sha256 (hex) of the canonical JSON of ``input_doc`` minus ``volatile`` fields.

    Raises TypeError/ValueError for input that is not plain JSON.
    """
    canonical = _CANONICAL.encode(_without(input_doc, volatile))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False),
# made once (json.dumps builds an encoder per call when given options).
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


@dataclass(frozen=True)
class CacheInfo:
    hits: int
    misses: int
    bypassed: int  # decisions evaluated without the cache (non-deterministic policy)
    size: int
    maxsize: int


class DecisionCache:
    """A thread-safe bounded LRU of Decisions."""

    def __init__(self, maxsize: int = 10_000) -> None:
        if maxsize < 0:
            raise ValueError("maxsize must be >= 0")
        self.maxsize = maxsize
        self._data: OrderedDict[tuple[str, ...], Decision] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, ...]) -> Decision | None:
        with self._lock:
            found = self._data.get(key)
            if found is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return found

    def put(self, key: tuple[str, ...], decision: Decision) -> None:
        if self.maxsize == 0:
            return
        with self._lock:
            self._data[key] = decision
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class PolicyEngine:
    """A policy version compiled once; ``decide()`` evaluates it per statement.

    Only ``source.policy_modules`` are compiled: ``*_test.rego`` files are left out.

    ``entrypoint``: explicit argument, else the manifest's ``metadata.entrypoint``, else
    ``data.pgwarden.decision``. ``bundle_hash``: what decisions name as the bundle hash
    (default: the tarball's sha256 when loaded from one, else the content hash).
    ``strict_builtin_errors`` (default True): a failing builtin is an evaluation error
    (deny) rather than an undefined expression. ``probe``: compile in a child process
    first, because rego-cpp can abort the whole process on some input (use it when
    activating a new bundle in the gateway). Raises PolicyCompileError.
    """

    def __init__(
        self,
        source: PolicySource,
        entrypoint: str | None = None,
        *,
        cache_size: int = 10_000,
        cache: DecisionCache | None = None,
        strict_builtin_errors: bool = True,
        bundle_hash: str | None = None,
        probe: bool = False,
    ) -> None:
        started = time.perf_counter()
        self.source = source
        raw_ep = entrypoint or source.entrypoint or DEFAULT_ENTRYPOINT
        try:
            self.entrypoint = normalize_entrypoint(raw_ep)
        except ValueError as exc:
            raise PolicyCompileError(None, str(exc)) from None
        self.entrypoint_ref = "data." + self.entrypoint.replace("/", ".")
        if not source.defines(self.entrypoint):
            raise PolicyCompileError(
                source.origin,
                f"entrypoint {self.entrypoint_ref} is not defined by any module or data file",
            )
        self.revision = source.revision
        self.hash = source.hash
        self.bundle_hash = bundle_hash or source.archive_sha256 or source.hash
        modules = source.policy_modules
        source.check_rules_vs_data()
        if probe:
            crash = probe_compile(modules, source.data, [self.entrypoint])
            if crash is not None:
                raise PolicyCompileError(source.origin, crash)
        self._compiled: CompiledPolicy = compile_policy(
            modules,
            source.data,
            [self.entrypoint],
            strict_builtin_errors=strict_builtin_errors,
        )
        self.nondeterministic: tuple[PolicyWarning, ...] = tuple(nondeterministic_calls(modules))
        self.deterministic = not self.nondeterministic
        self.cache = cache if cache is not None else DecisionCache(cache_size)
        self._by_text: dict[str, Decision] = {}
        self._bypassed = 0
        mentioned: set[str] = set()
        for name in modules:
            mentioned |= source.info(name).field_names
        self.volatile_fields: tuple[tuple[str, ...], ...] = tuple(
            p for p in VOLATILE_FIELDS if p[-1] not in mentioned
        )
        self.build_seconds = time.perf_counter() - started

    @classmethod
    def from_path(cls, path: str, entrypoint: str | None = None, **kwargs: Any) -> PolicyEngine:
        """Load a directory/file/tarball and compile it."""
        return cls(PolicySource.load(path), entrypoint, **kwargs)

    # -- evaluation -----------------------------------------------------------------------

    def evaluate(self, input_doc: Any) -> Any:
        """The entrypoint's raw value (or ``UNDEFINED``); raises EvalError. No cache."""
        return self._compiled.evaluate(self.entrypoint, input_doc)

    def decide(self, input_doc: Mapping[str, Any], cache_key: str | None = None) -> Decision:
        """Evaluate the policy for one statement and validate the answer. Never raises.

        ``cache_key``: the caller's own key (see module doc); by default the input digest.
        """
        try:
            key: tuple[str, ...] | None = None
            if self.deterministic and self.cache.maxsize:
                if cache_key is not None:
                    digest = "k:" + cache_key
                else:
                    try:
                        digest = "d:" + input_digest(input_doc, self.volatile_fields)
                    except (TypeError, ValueError) as exc:
                        return self._error(f"input is not JSON data: {exc}")
                key = (self.hash, self.entrypoint, digest)
                hit = self.cache.get(key)
                if hit is not None:
                    return hit
            else:
                self._bypassed += 1
            decision = self._evaluate_decision(input_doc)
            if key is not None and decision.error is None:
                self.cache.put(key, decision)
            return decision
        except Exception as exc:  # fail closed, never raise into the data path
            return self._error(f"internal error: {type(exc).__name__}: {exc}")

    def _evaluate_decision(self, input_doc: Any) -> Decision:
        try:
            text = self._compiled.evaluate_json(self.entrypoint, input_doc)
        except EvalError as exc:
            return self._error(f"evaluation failed: {exc}")
        # Most statements get one of a few answers: validate each answer text once.
        known = self._by_text.get(text) if text is not None else None
        if known is not None:
            return known
        try:
            value = UNDEFINED if text is None else result_value(text)
        except EvalError as exc:
            return self._error(f"evaluation failed: {exc}")
        decision = validate_decision(
            value,
            entrypoint=self.entrypoint_ref,
            bundle_revision=self.revision,
            bundle_hash=self.bundle_hash,
        )
        if text is not None and len(text) <= _TEXT_MEMO_MAX_LEN:
            memo = self._by_text
            if len(memo) >= _TEXT_MEMO_SIZE:
                memo.clear()
            memo[text] = decision
        return decision

    def _error(self, why: str) -> Decision:
        return Decision.policy_error(
            why, bundle_revision=self.revision, bundle_hash=self.bundle_hash
        )

    # -- introspection --------------------------------------------------------------------

    def cache_info(self) -> CacheInfo:
        return CacheInfo(
            self.cache.hits, self.cache.misses, self._bypassed, len(self.cache), self.cache.maxsize
        )

    def clear_cache(self) -> None:
        self.cache.clear()

    def gaps(self) -> list[PolicyWarning]:
        """``policy_gaps`` for this engine's source."""
        return policy_gaps(self.source)

    def __repr__(self) -> str:
        return (
            f"PolicyEngine({self.entrypoint_ref}, revision={self.revision!r}, "
            f"hash={self.hash[:12]}, deterministic={self.deterministic})"
        )
