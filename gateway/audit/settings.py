"""Audit settings (the ``audit:`` config section) and the writer they describe.

    settings = AuditSettings.from_config(config.audit)     # or AuditSettings(dir=...)
    writer = open_audit(settings, worker=index)              # not started yet
    writer.start()

Each gateway *process* writes its own chain: with N pre-forked workers, pass each one its
``worker`` index and its instance id becomes ``<instance_id>-w<index>``.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import Signer
from .filesink import FileSink
from .writer import AuditError, AuditWriter, WriterOptions

__all__ = ["SINKS", "AuditSettings", "default_instance_id", "open_audit"]

SINKS = ("file", "postgres")


def default_instance_id() -> str:
    """The host name, reduced to the characters instance ids allow."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()) or "gateway"
    return name[:56]


@dataclass(frozen=True)
class AuditSettings:
    dir: Path = Path("audit")
    signing_key: Path | None = None
    sink: str = "file"  # file | postgres
    instance_id: str | None = None  # default: the host name
    durability: str = "os"  # os | fsync
    checkpoint_every: int = 10_000  # records
    checkpoint_seconds: float = 60.0
    segment_bytes: int = 64 * 1024 * 1024
    segment_seconds: float | None = 86_400.0
    retry_seconds: float = 1.0
    max_backlog: int = 100_000
    postgres_dsn: str | None = None  # sink: postgres (a secret: {env:} / {file:} in YAML)
    postgres_table: str = "pgwarden_audit"

    def __post_init__(self) -> None:
        if self.sink not in SINKS:
            raise AuditError(f"audit.sink must be one of {', '.join(SINKS)}, not {self.sink!r}")
        if self.sink == "postgres" and not self.postgres_dsn:
            raise AuditError("audit.sink: postgres needs audit.postgres.dsn")

    @classmethod
    def from_config(cls, cfg: Any) -> AuditSettings:
        """From ``gateway.config.model.AuditConfig`` (fields it lacks keep their defaults;
        a ``Secret`` DSN is unwrapped with ``.reveal()``)."""
        kwargs: dict[str, Any] = {}
        for name in cls.__dataclass_fields__:
            if hasattr(cfg, name):
                kwargs[name] = getattr(cfg, name)
        dsn = kwargs.get("postgres_dsn")
        if dsn is not None and callable(getattr(dsn, "reveal", None)):
            kwargs["postgres_dsn"] = dsn.reveal()
        return cls(**kwargs)

    def options(self) -> WriterOptions:
        return WriterOptions(
            durability=self.durability, checkpoint_every=self.checkpoint_every,
            checkpoint_seconds=self.checkpoint_seconds, segment_bytes=self.segment_bytes,
            segment_seconds=self.segment_seconds, retry_seconds=self.retry_seconds,
            max_backlog=self.max_backlog,
        )


def open_audit(settings: AuditSettings, *, worker: int | None = None,
               on_health: Callable[[bool, str | None], None] | None = None) -> AuditWriter:
    """The writer for these settings (call ``.start()``). Raises AuditError."""
    instance = settings.instance_id or default_instance_id()
    if worker is not None:
        instance = f"{instance}-w{worker}"
    try:
        options = settings.options()
    except ValueError as exc:
        raise AuditError(f"audit settings: {exc}") from None
    signer = Signer.from_pem_file(settings.signing_key) if settings.signing_key else None
    sink: Any
    if settings.sink == "postgres":
        from .pgsink import PgSink

        assert settings.postgres_dsn is not None
        sink = PgSink(settings.postgres_dsn, instance, table=settings.postgres_table,
                      synchronous_commit=settings.durability == "fsync")
    else:
        sink = FileSink(settings.dir, instance, fsync=settings.durability == "fsync")
    return AuditWriter(sink, instance=instance, signer=signer, options=options,
                       on_health=on_health)
