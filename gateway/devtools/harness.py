"""Run a real `pgwarden serve` process against an upstream, for the demo, tests and bench.

The gateway runs as its own process (as in production), configured by a YAML file
written here; the port it bound is read back from its `gateway.listening` log line.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from gateway.identity.devissuer import DevIssuer, generate_issuer

from .certs import write_self_signed

ALLOW_ALL_REGO = """package pgwarden

# Development only: every statement is allowed, nothing is masked.
decision := {"allow": true, "reasons": [], "mask": {}, "require_approval": false,
             "approvers": [], "row_limit": null, "db_role": null}
"""


@dataclass
class UpstreamSpec:
    host: str
    port: int
    database: str
    user: str
    password: str | None
    tls: str = "disable"
    ca_file: Path | None = None


@dataclass
class GatewayProcess:
    """A configured gateway directory plus its running process."""

    directory: Path
    upstreams: dict[str, UpstreamSpec]
    allow_plaintext: bool = True
    workers: int = 1
    port: int = 0
    drain_timeout: float = 5.0
    leeway: float = 30.0  # JWT clock-skew tolerance (seconds)
    # A policy directory; None writes one that allows everything (relay-level tests).
    policy_dir: Path | None = None
    enforce: bool = True
    # A whole `policy:` section (YAML text) replacing the one derived from policy_dir.
    policy_yaml: str | None = None
    extra_yaml: str = ""
    # More of the dev issuer's provider entry (YAML lines indented as its keys)
    provider_yaml: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)
    issuer: DevIssuer | None = None
    proc: subprocess.Popen[str] | None = None
    host: str = "127.0.0.1"
    logs: list[dict[str, Any]] = field(default_factory=list)
    _lines: queue.Queue[str] = field(default_factory=queue.Queue)

    def prepare(self) -> GatewayProcess:
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        if not (d / "certs" / "gateway.pem").exists():
            write_self_signed(d / "certs" / "gateway.pem", d / "certs" / "gateway.key")
        if self.issuer is None:
            self.issuer = (DevIssuer.load(d / "issuer") if (d / "issuer" / "issuer.json").exists()
                           else generate_issuer(d / "issuer"))
        if self.policy_dir is None and self.enforce:
            allow = d / "policy-allow-all"
            allow.mkdir(exist_ok=True)
            (allow / "allow.rego").write_text(ALLOW_ALL_REGO)
        (d / "gateway.yaml").write_text(self.render_config())
        return self

    @property
    def config_path(self) -> Path:
        return self.directory / "gateway.yaml"

    @property
    def cert_path(self) -> Path:
        return self.directory / "certs" / "gateway.pem"

    def render_config(self) -> str:
        assert self.issuer is not None
        lines = [
            "listen:",
            f"  address: {self.host}:{self.port}",
            "  tls: {cert: certs/gateway.pem, key: certs/gateway.key}",
            f"  allow_plaintext: {'true' if self.allow_plaintext else 'false'}",
            f"  workers: {self.workers}",
            f"  drain_timeout: {self.drain_timeout}",
            "identity:",
            "  providers:",
            f"    - issuer: {json.dumps(self.issuer.issuer)}",
            "      audience: pgwarden",
            "      jwks: {file: issuer/jwks.json}",
            "      groups_claim: groups",
            f"      leeway: {self.leeway}",
            *self.provider_yaml.splitlines(),
            "connections:",
        ]
        for name, up in self.upstreams.items():
            lines += [
                f"  {name}:",
                f"    host: {up.host}",
                f"    port: {up.port}",
                f"    database: {up.database}",
                f"    user: {up.user}",
                f"    tls: {up.tls}",
            ]
            if up.ca_file is not None:
                lines.append(f"    ca: {{file: {json.dumps(str(up.ca_file))}}}")
            if up.password is not None:
                lines.append(f"    password: {{env: PGWARDEN_PW_{name.upper()}}}")
        if self.policy_yaml is not None:
            lines += self.policy_yaml.rstrip("\n").split("\n")
        elif not self.enforce:
            lines += ["policy:", "  enforce: false"]
        else:
            policy = self.policy_dir or (self.directory / "policy-allow-all")
            lines += ["policy:", f"  bundle: {json.dumps(str(policy))}", "  allow_unsigned: true"]
        return "\n".join(lines) + "\n" + self.extra_yaml

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        for name, up in self.upstreams.items():
            if up.password is not None:
                env[f"PGWARDEN_PW_{name.upper()}"] = up.password
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 20.0) -> GatewayProcess:
        self.prepare()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=self.env(),
            cwd=str(self.directory),
        )
        assert self.proc.stderr is not None
        threading.Thread(target=self._pump, args=(self.proc.stderr,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"gateway exited with {self.proc.returncode}") from None
                continue
            doc = _parse(line)
            if doc and doc.get("event") == "gateway.listening":
                self.port = int(doc["addresses"][0].rsplit(":", 1)[1])
                return self
        self.stop()
        raise RuntimeError("gateway did not start listening in time")

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line)
            doc = _parse(line)
            self.logs.append(doc if doc is not None else {"raw": line.rstrip("\n")})

    def wait_for_log(self, match: Callable[[dict[str, Any]], bool],
                     timeout: float = 10.0) -> dict[str, Any]:
        """The first log record `match` accepts, waiting for it: a thread reads the
        gateway's stderr, so a line written just before a client saw an error may not
        be in `logs` yet. Raises AssertionError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for doc in list(self.logs):
                if match(doc):
                    return doc
            if time.monotonic() >= deadline:
                raise AssertionError("no such log record within the timeout")
            time.sleep(0.02)

    def token(self, subject: str = "ci-bot", groups: tuple[str, ...] = ("ci",),
              **kwargs: Any) -> str:
        assert self.issuer is not None
        return self.issuer.mint(subject, groups=groups, **kwargs)

    def dsn(self, connection: str, sslmode: str = "require", user: str = "ci-bot") -> str:
        return (f"host={self.host} port={self.port} dbname={connection} user={user} "
                f"sslmode={sslmode} connect_timeout=10")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log_text(self) -> str:
        return "\n".join(json.dumps(d) for d in self.logs)

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _parse(line: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None
