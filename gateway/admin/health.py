"""Health: named checks behind ``GET /healthz`` and ``grpc.health.v1.Health``.

A check is a callable returning True (healthy) or False; one that raises counts as
unhealthy. The gateway is healthy when every check is. The gRPC health service answers
for ``""`` (the whole server) and for each registered gRPC service name, all with the
overall status; unknown names get NOT_FOUND (Check) or SERVICE_UNKNOWN (Watch), as the
protocol says. Health needs no token: load balancers and probes call it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable

import grpc

from . import health_pb2, health_pb2_grpc

__all__ = ["Health", "HealthServicer"]

_STATUS = health_pb2.HealthCheckResponse


class Health:
    def __init__(self) -> None:
        self._checks: dict[str, Callable[[], bool]] = {}
        self.shutting_down = False

    def add_check(self, name: str, check: Callable[[], bool]) -> None:
        self._checks[name] = check

    def remove_check(self, name: str) -> None:
        self._checks.pop(name, None)

    def status(self) -> tuple[bool, dict[str, bool]]:
        results: dict[str, bool] = {}
        for name, check in list(self._checks.items()):
            try:
                results[name] = bool(check())
            except Exception:
                results[name] = False
        if self.shutting_down:
            results["shutdown"] = False
        return all(results.values()), results

    @property
    def ok(self) -> bool:
        return self.status()[0]


class HealthServicer(health_pb2_grpc.HealthServicer):
    def __init__(self, health: Health, services: Iterable[str] = (),
                 watch_interval: float = 1.0) -> None:
        self.health = health
        self.services = {"", *services}
        self.watch_interval = watch_interval

    def _status(self, service: str) -> health_pb2.HealthCheckResponse.ServingStatus:
        if service not in self.services:
            return _STATUS.SERVICE_UNKNOWN
        return _STATUS.SERVING if self.health.ok else _STATUS.NOT_SERVING

    async def Check(self, request: health_pb2.HealthCheckRequest,
                    context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        status = self._status(request.service)
        if status == _STATUS.SERVICE_UNKNOWN:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"unknown service {request.service!r}")
        return _STATUS(status=status)

    async def Watch(self, request: health_pb2.HealthCheckRequest,
                    context: grpc.aio.ServicerContext
                    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last = None
        while True:
            status = self._status(request.service)
            if status != last:
                yield _STATUS(status=status)
                last = status
            await asyncio.sleep(self.watch_interval)
