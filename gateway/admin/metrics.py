"""A small metrics registry rendered in the Prometheus text format (version 0.0.4).

No client library: counters and gauges with labels, values kept in plain dicts (the
event loop and the GIL serialize updates well enough for counts; a lock guards the
child maps). ``GET /metrics`` on ``admin.http`` serves :func:`REGISTRY.render`.

The gateway's own metrics are module-level objects, incremented from the data path::

    from gateway.admin import metrics
    metrics.STATEMENTS.labels(outcome="allowed").inc()
    metrics.SESSIONS_ACTIVE.inc() / .dec()
    metrics.APPROVALS_PENDING.set_function(lambda: approvals.held_count)
    metrics.set_bundle_info(revision, sha256)

Each worker process has its own registry; with several, the worker serving ``admin.http``
renders every worker's series, labelled ``worker`` (:meth:`Registry.render_workers`).
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "ADMIN_REQUESTS",
    "APPROVALS_PENDING",
    "APPROVALS_RESOLVED",
    "AUTH_FAILURES",
    "BUNDLE_INFO",
    "BUNDLE_RELOADS",
    "CONTENT_TYPE",
    "GRANTS_USED",
    "MASKED_VALUES",
    "REGISTRY",
    "SAFETY_NET_HITS",
    "SESSIONS_ACTIVE",
    "SESSIONS_TOTAL",
    "STATEMENTS",
    "Counter",
    "Gauge",
    "Registry",
    "observe_approval_event",
    "set_bundle_info",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


class _Child:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        if not _NAME.fullmatch(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _LABEL.fullmatch(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r}")
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], _Child] = {}
        self._lock = threading.Lock()
        self._function: Callable[[], float] | None = None
        if not self.labelnames:
            self._children[()] = _Child()

    def _child(self, values: tuple[str, ...]) -> _Child:
        child = self._children.get(values)
        if child is None:
            with self._lock:
                child = self._children.setdefault(values, _Child())
        return child

    def _key(self, args: tuple[object, ...], kwargs: dict[str, object]) -> tuple[str, ...]:
        if args and kwargs:
            raise ValueError("pass label values by position or by name, not both")
        if kwargs:
            names = self.labelnames
            if len(kwargs) != len(names) or not all(n in kwargs for n in names):
                raise ValueError(f"{self.name} takes labels {', '.join(names)}")
            if len(names) == 1:  # the usual case, once per statement
                return (str(kwargs[names[0]]),)
            return tuple([str(kwargs[n]) for n in names])
        if len(args) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {', '.join(self.labelnames)}")
        return tuple(str(a) for a in args)

    def clear(self) -> None:
        with self._lock:
            self._children = {} if self.labelnames else {(): _Child()}

    def samples(self) -> Iterable[tuple[tuple[str, ...], float]]:
        if self._function is not None:
            try:
                yield (), float(self._function())
            except Exception:  # a broken callback must not break the scrape
                yield (), math.nan
            return
        with self._lock:
            items = list(self._children.items())
        for values, child in sorted(items):
            yield values, child.value

    def value(self, *labels: object, **kw: object) -> float:
        """The current value (tests, status pages)."""
        if self._function is not None:
            return float(self._function())
        child = self._children.get(self._key(labels, kw))
        return child.value if child is not None else 0.0

    def render(self, series: Iterable[tuple[Sequence[str], float]] | None = None,
               labelnames: Sequence[str] | None = None) -> list[str]:
        """This metric's lines: its own samples, or `series` (labelled `labelnames`)."""
        names = self.labelnames if labelnames is None else labelnames
        lines = [f"# HELP {self.name} {_escape_help(self.help)}",
                 f"# TYPE {self.name} {self.kind}"]
        for values, value in self.samples() if series is None else series:
            if values:
                labels = ",".join(f'{n}="{_escape_label(v)}"'
                                  for n, v in zip(names, values, strict=True))
                lines.append(f"{self.name}{{{labels}}} {_number(value)}")
            else:
                lines.append(f"{self.name} {_number(value)}")
        return lines


class _CounterChild:
    __slots__ = ("_c",)

    def __init__(self, child: _Child) -> None:
        self._c = child

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self._c.value += amount


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"counter {name!r} should end in _total")
        super().__init__(name, help, labelnames)

    def labels(self, *values: object, **kw: object) -> _CounterChild:
        return _CounterChild(self._child(self._key(values, kw)))

    def count(self, value: str) -> None:
        """``labels(value).inc()`` for a counter with one label, without the checks of
        either (once per statement)."""
        child = self._children.get((value,))
        if child is None:
            if len(self.labelnames) != 1:
                raise ValueError(f"{self.name} takes labels {', '.join(self.labelnames)}")
            child = self._child((value,))
        child.value += 1

    def inc(self, amount: float = 1.0) -> None:
        self.labels().inc(amount)


class _GaugeChild:
    __slots__ = ("_c",)

    def __init__(self, child: _Child) -> None:
        self._c = child

    def set(self, value: float) -> None:
        self._c.value = float(value)

    def inc(self, amount: float = 1.0) -> None:
        self._c.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self._c.value -= amount


class Gauge(_Metric):
    kind = "gauge"

    def labels(self, *values: object, **kw: object) -> _GaugeChild:
        return _GaugeChild(self._child(self._key(values, kw)))

    def set(self, value: float) -> None:
        self.labels().set(value)

    def inc(self, amount: float = 1.0) -> None:
        self.labels().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self.labels().dec(amount)

    def set_function(self, fn: Callable[[], float] | None) -> None:
        """Read the value from ``fn`` at scrape time (unlabelled gauges only)."""
        if self.labelnames:
            raise ValueError("set_function needs a gauge without labels")
        self._function = fn


class Registry:
    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._lock = threading.Lock()

    def register(self, metric: _Metric) -> _Metric:
        with self._lock:
            if metric.name in self._metrics:
                raise ValueError(f"metric {metric.name} is already registered")
            self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        metric = Counter(name, help, labelnames)
        self.register(metric)
        return metric

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        metric = Gauge(name, help, labelnames)
        self.register(metric)
        return metric

    def get(self, name: str) -> _Metric | None:
        return self._metrics.get(name)

    def render(self) -> str:
        with self._lock:
            metrics = list(self._metrics.values())
        lines: list[str] = []
        for metric in metrics:
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"

    def snapshot(self) -> dict[str, list[list[Any]]]:
        """Every series: metric name -> [[label values], value] (JSON, for a sibling)."""
        with self._lock:
            metrics = list(self._metrics.values())
        return {m.name: [[list(values), value] for values, value in m.samples()]
                for m in metrics}

    def render_workers(self, workers: Mapping[int, Mapping[str, Any]]) -> str:
        """The gateway's metrics from every worker's :meth:`snapshot` (this one's too),
        each series labelled with its worker: each worker process counts its own."""
        with self._lock:
            metrics = list(self._metrics.values())
        lines: list[str] = []
        for metric in metrics:
            series = [((*map(str, values), str(worker)), float(value))
                      for worker in sorted(workers)
                      for values, value in workers[worker].get(metric.name, ())
                      # (a sibling of another build: not this metric's series)
                      if len(values) == len(metric.labelnames)]
            lines += metric.render(series, (*metric.labelnames, "worker"))
        return "\n".join(lines) + "\n"


REGISTRY = Registry()

SESSIONS_ACTIVE = REGISTRY.gauge(
    "pgwarden_sessions_active", "Client sessions open now (authenticated or not).")
SESSIONS_TOTAL = REGISTRY.counter(
    "pgwarden_sessions_total", "Client sessions accepted.")
AUTH_FAILURES = REGISTRY.counter(
    "pgwarden_auth_failures_total", "Refused client authentications, by AuthError reason.",
    ("reason",))
STATEMENTS = REGISTRY.counter(
    "pgwarden_statements_total",
    "Statements decided, by outcome (allowed, denied, masked, held, error).", ("outcome",))
MASKED_VALUES = REGISTRY.counter(
    "pgwarden_masked_values_total", "Column values masked by a policy mask.")
SAFETY_NET_HITS = REGISTRY.counter(
    "pgwarden_safety_net_hits_total", "Luhn-valid PANs the content safety net caught.")
APPROVALS_PENDING = REGISTRY.gauge(
    "pgwarden_approvals_pending", "Statements this gateway holds for an approval.")
APPROVALS_RESOLVED = REGISTRY.counter(
    "pgwarden_approvals_resolved_total",
    "Approval requests ended, by status (approved, denied, expired, withdrawn).",
    ("status",))
GRANTS_USED = REGISTRY.counter(
    "pgwarden_grants_used_total", "Statements run inside an approval's grant window.")
BUNDLE_INFO = REGISTRY.gauge(
    "pgwarden_bundle_info", "The policy bundle serving now (value 1).", ("revision", "hash"))
BUNDLE_RELOADS = REGISTRY.counter(
    "pgwarden_bundle_reloads_total",
    "Bundle reload attempts, by result (activated, unchanged, rejected, unavailable).",
    ("result",))
ADMIN_REQUESTS = REGISTRY.counter(
    "pgwarden_admin_requests_total", "Admin API calls, by method and gRPC status code.",
    ("method", "code"))


_RESOLVED_KINDS = {"approval_granted": "approved", "approval_denied": "denied",
                   "approval_expired": "expired", "approval_withdrawn": "withdrawn"}


def observe_approval_event(kind: str, details: object = None) -> None:
    """Count an ApprovalService event (chain it into ``on_event``)."""
    status = _RESOLVED_KINDS.get(kind)
    if status is not None:
        APPROVALS_RESOLVED.labels(status=status).inc()
    elif kind == "grant_used":
        GRANTS_USED.inc()


def set_bundle_info(revision: str | None, sha256: str | None) -> None:
    """One series only: the bundle serving now."""
    from gateway.audit.redact import scrub  # (a revision is a bundle author's text)

    BUNDLE_INFO.clear()
    if sha256:
        BUNDLE_INFO.labels(revision=scrub(revision or ""), hash=sha256).set(1)
