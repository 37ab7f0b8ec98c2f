"""Hot reload of signed bundles in a real gateway: SIGHUP (every worker), file change,
URL polling with ETag, bad bundles, restart with the bundle server down, and pgbench
running through the gateway while bundles swap."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import PgBackend, upstreams_for
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.bundle.archive import read_tarball, write_tarball
from gateway.bundle.build import build_bundle
from gateway.devtools.embedded_pg import BIN_DIR
from gateway.devtools.harness import GatewayProcess

POLICY = """package pgwarden

import rego.v1

default allow := true

allow := false if contains(input.statement.sql, "which_revision")

decision := {"allow": allow, "reasons": [concat("", ["serving ", data.pgwarden.revision])],
             "mask": {}, "require_approval": false, "approvers": [], "row_limit": null,
             "db_role": null}
"""
POLICY_TEST = """package pgwarden_test

import rego.v1

test_probe_is_denied if {
    d := data.pgwarden.decision with input.statement.sql as "x which_revision"
    d.allow == false
}
"""
POLL = 0.5


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> tuple[ec.EllipticCurvePrivateKey, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    pub = tmp_path_factory.mktemp("keys") / "bundle.pub"
    pub.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key, pub


def make_bundle(tmp: Path, key: ec.EllipticCurvePrivateKey, revision: str,
                *, failing_test: bool = False) -> bytes:
    d = tmp / f"src-{revision}-{failing_test}"
    (d / "pgwarden").mkdir(parents=True, exist_ok=True)
    (d / "pgwarden" / "policy.rego").write_text(POLICY)
    test = POLICY_TEST.replace("== false", "== true") if failing_test else POLICY_TEST
    (d / "pgwarden" / "policy_test.rego").write_text(test)
    (d / "pgwarden" / "data.json").write_text(json.dumps({"revision": revision}))
    return build_bundle(d, revision=revision, signing_key=key)


def put(path: Path, raw: bytes) -> None:
    """Replace a file atomically, as a deploy would."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(raw)
    os.replace(tmp, path)


def policy_yaml(bundle: str, pub: Path, state: Path, poll: float, **extra: object) -> str:
    lines = ["policy:", f"  bundle: {json.dumps(bundle)}",
             f"  verification_key: {{file: {json.dumps(str(pub))}}}",
             f"  state_dir: {json.dumps(str(state))}", f"  poll_interval: {poll}"]
    lines += [f"  {k}: {json.dumps(v)}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serving(gw: GatewayProcess, **kw: object) -> str:
    """The revision that decides this connection's statements (from the policy's reason)."""
    with psycopg.connect(gw.dsn("payments", **kw), password=gw.token(), autocommit=True) as c:
        try:
            c.execute("select 'which_revision'")
        except psycopg.errors.InsufficientPrivilege as e:
            m = re.search(r"serving (\S+)", str(e))
            assert m, str(e)
            return m.group(1)
    raise AssertionError("the probe statement was allowed")


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def events(gw: GatewayProcess, name: str) -> list[dict[str, object]]:
    return [d for d in gw.logs if d.get("event") == name]


def archived(state: Path, raw: bytes) -> bool:
    sha = hashlib.sha256(raw).hexdigest()
    path = state / "bundles" / f"{sha}.tar.gz"
    return path.exists() and path.read_bytes() == raw


@pytest.fixture
def gateway_dir(tmp_path: Path) -> Path:
    return tmp_path / "gw"


def start(pg: PgBackend, directory: Path, yaml: str, **kw: object) -> GatewayProcess:
    gw = GatewayProcess(directory, upstreams_for(pg), policy_yaml=yaml, **kw)  # type: ignore[arg-type]
    return gw.start()


# -- SIGHUP in every worker; a bad bundle leaves the old revision serving -------------------


def test_sighup_reaches_every_worker_and_bad_bundles_are_rejected(
        pg: PgBackend, tmp_path: Path, signer: tuple[ec.EllipticCurvePrivateKey, Path]) -> None:
    key, pub = signer
    bundle, state = tmp_path / "pci.tar.gz", tmp_path / "state"
    r1 = make_bundle(tmp_path, key, "r1")
    put(bundle, r1)
    gw = start(pg, tmp_path / "gw", policy_yaml(str(bundle), pub, state, 0),
               workers=2, port=free_port())
    try:
        wait_for(lambda: len(events(gw, "gateway.listening")) >= 2, 15, "both workers")
        assert serving(gw) == "r1"
        # Tampered: a file changed after signing.
        files = read_tarball(make_bundle(tmp_path, key, "r2"))
        files["pgwarden/data.json"] = b'{"revision": "evil"}'
        put(bundle, write_tarball(files))
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: len(events(gw, "bundle.rejected")) >= 2, 15, "both workers to reject")
        rejected = events(gw, "bundle.rejected")
        assert {e["worker"] for e in rejected} == {0, 1}
        assert rejected[0]["file"] == "pgwarden/data.json"
        assert "digest mismatch" in str(rejected[0]["reason"])
        assert rejected[0]["serving_revision"] == "r1"
        assert all(serving(gw) == "r1" for _ in range(6))
        # A good one: every worker swaps, sessions already open stay connected.
        with psycopg.connect(gw.dsn("payments"), password=gw.token(), autocommit=True) as c:
            r2 = make_bundle(tmp_path, key, "r2")
            put(bundle, r2)
            gw.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: len(events(gw, "bundle.activated")) >= 4, 15,
                     "both workers to activate r2")
            assert c.execute("select 41 + 1").fetchone() == (42,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="serving r2"):
                c.execute("select 'which_revision'")
        assert {e["worker"] for e in events(gw, "bundle.activated")
                if e["revision"] == "r2"} == {0, 1}
        assert all(serving(gw) == "r2" for _ in range(6))
        assert archived(state, r1) and archived(state, r2)
        # Provenance: the decision names the revision and the sha256 of the tarball.
        denials = [d for d in gw.logs if d.get("event") == "decision"
                   and d.get("bundle_revision") == "r2"]
        assert denials and denials[-1]["bundle_hash"] == hashlib.sha256(r2).hexdigest()
    finally:
        gw.stop()
    assert gw.proc is not None and gw.proc.returncode == 0, gw.log_text()[-3000:]


def test_file_change_swaps_within_a_poll_interval_and_failing_tests_reject(
        pg: PgBackend, tmp_path: Path, signer: tuple[ec.EllipticCurvePrivateKey, Path]) -> None:
    key, pub = signer
    bundle, state = tmp_path / "pci.tar.gz", tmp_path / "state"
    put(bundle, make_bundle(tmp_path, key, "r1"))
    gw = start(pg, tmp_path / "gw", policy_yaml(str(bundle), pub, state, POLL, run_tests=True))
    try:
        assert serving(gw) == "r1"
        put(bundle, make_bundle(tmp_path, key, "r2", failing_test=True))
        wait_for(lambda: bool(events(gw, "bundle.rejected")), 10, "the rejection")
        assert "bundle test data.pgwarden_test.test_probe_is_denied failed" in str(
            events(gw, "bundle.rejected")[0]["reason"])
        assert serving(gw) == "r1"
        put(bundle, make_bundle(tmp_path, key, "r3"))
        took = wait_for(lambda: serving(gw) == "r3", 10, "r3")
        assert took < POLL * 1.1 + 3.0
    finally:
        gw.stop()


# -- a bundle server: ETag polling; restart while it is down uses the persisted copy --------


class BundleServer:
    def __init__(self) -> None:
        self.body = b""
        self.requests = 0
        self.not_modified = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                etag = '"' + hashlib.sha256(outer.body).hexdigest()[:16] + '"'
                if self.headers.get("If-None-Match") == etag:
                    outer.not_modified += 1
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/gzip")
                self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/bundles/pci"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def bundle_server() -> Iterator[BundleServer]:
    srv = BundleServer()
    yield srv
    srv.close()


def test_url_polling_with_etag_and_restart_while_the_server_is_down(
        pg: PgBackend, tmp_path: Path, signer: tuple[ec.EllipticCurvePrivateKey, Path],
        bundle_server: BundleServer) -> None:
    key, pub = signer
    state = tmp_path / "state"
    yaml = policy_yaml(bundle_server.url, pub, state, POLL)
    bundle_server.body = make_bundle(tmp_path, key, "r1")
    gw = start(pg, tmp_path / "gw", yaml)
    try:
        assert serving(gw) == "r1"
        wait_for(lambda: bundle_server.not_modified >= 3, 10, "304 Not Modified answers")
        r2 = make_bundle(tmp_path, key, "r2")
        bundle_server.body = r2
        took = wait_for(lambda: serving(gw) == "r2", 10, "r2 from the server")
        assert took < POLL * 1.1 + 3.0
        # A bad bundle on the server: rejected once, the old one keeps serving.
        bundle_server.body = b"\x1f\x8bnot really"
        wait_for(lambda: bool(events(gw, "bundle.rejected")), 10, "the rejection")
        assert serving(gw) == "r2"
        time.sleep(POLL * 3)
        assert len(events(gw, "bundle.rejected")) == 1  # its ETag now answers 304
    finally:
        gw.stop()
    assert json.loads((state / "last-good.json").read_text())["revision"] == "r2"
    bundle_server.close()  # the bundle server is down
    gw2 = start(pg, tmp_path / "gw2", yaml)
    try:
        assert serving(gw2) == "r2"
        persisted = events(gw2, "bundle.using_persisted")
        assert persisted and persisted[0]["sha256"] == hashlib.sha256(r2).hexdigest()
        assert events(gw2, "bundle.unavailable")
    finally:
        gw2.stop()


def test_startup_without_any_usable_bundle_fails_clearly(
        pg: PgBackend, tmp_path: Path, signer: tuple[ec.EllipticCurvePrivateKey, Path]) -> None:
    _, pub = signer
    other = ec.generate_private_key(ec.SECP256R1())
    bundle = tmp_path / "pci.tar.gz"
    put(bundle, make_bundle(tmp_path, other, "r1"))
    gw = GatewayProcess(tmp_path / "gw", upstreams_for(pg),
                        policy_yaml=policy_yaml(str(bundle), pub, tmp_path / "state", 0))
    with pytest.raises(RuntimeError, match="exited with 2"):
        gw.start()
    assert any("does not verify with the configured key" in d.get("error", "")
               for d in gw.logs if d.get("event") == "gateway.policy_unavailable")


# -- the reloader in-process: reload_now() for the admin API, the audit hook ----------------


def test_reload_now_results_and_event_hook(tmp_path: Path,
                                           signer: tuple[ec.EllipticCurvePrivateKey, Path]
                                           ) -> None:
    from gateway.bundle.reloader import BundleReloader
    from gateway.config.model import PolicyConfig

    key, pub = signer
    bundle = tmp_path / "pci.tar.gz"
    put(bundle, make_bundle(tmp_path, key, "r1"))
    active: list[object] = []
    seen: list[tuple[str, dict[str, object]]] = []
    cfg = PolicyConfig(str(bundle), pub, False, state_dir=tmp_path / "state", poll_interval=0)
    reloader = BundleReloader(cfg, base_dir=tmp_path, activate=active.append,
                              on_event=lambda kind, details: seen.append((kind, details)))
    engine = reloader.load_initial()
    assert engine.revision == "r1" and active == [engine]
    assert reloader.reload_now("admin").status == "unchanged"
    put(bundle, make_bundle(tmp_path, key, "r2"))
    result = reloader.reload_now("admin")
    assert (result.status, result.revision) == ("activated", "r2")
    put(bundle, b"\x1f\x8b garbage")
    result = reloader.reload_now("admin")
    assert (result.status, result.revision) == ("rejected", "r2")
    assert "not a readable .tar.gz" in str(result.reason)
    assert [k for k, _ in seen] == ["bundle_activated", "bundle_activated", "bundle_rejected"]
    assert seen[1][1]["previous_revision"] == "r1" and seen[2][1]["serving_revision"] == "r2"
    assert reloader.status()["activations"] == 2 and reloader.status()["rejections"] == 1


def test_a_key_file_gone_at_reload_rejects_the_bundle_until_it_is_back(
        tmp_path: Path, signer: tuple[ec.EllipticCurvePrivateKey, Path]) -> None:
    """The key is read once per reload: gone, the new bundle is rejected naming the key
    file (the one serving stays); back, the same bundle is activated (its rejection was
    not remembered under a key that could not be read)."""
    from gateway.bundle.reloader import BundleReloader
    from gateway.config.model import PolicyConfig

    key, pub = signer
    bundle = tmp_path / "pci.tar.gz"
    put(bundle, make_bundle(tmp_path, key, "r1"))
    cfg = PolicyConfig(str(bundle), pub, False, state_dir=tmp_path / "state", poll_interval=0)
    reloader = BundleReloader(cfg, base_dir=tmp_path, activate=lambda engine: None)
    assert reloader.load_initial().revision == "r1"
    put(bundle, make_bundle(tmp_path, key, "r2"))
    saved = pub.read_bytes()
    pub.unlink()
    result = reloader.reload_now("admin")
    assert (result.status, result.revision) == ("rejected", "r1")
    assert "cannot read" in str(result.reason) and result.file == str(pub)
    pub.write_bytes(saved)
    result = reloader.reload_now("admin")
    assert (result.status, result.revision) == ("activated", "r2")


# -- pgbench through the gateway while bundles swap ----------------------------------------

PGBENCH_SCRIPT = "\\set x random(1, 1000000)\nSELECT :x;\n"


def test_hot_reload_under_load(pg: PgBackend, tmp_path: Path,
                               signer: tuple[ec.EllipticCurvePrivateKey, Path]) -> None:
    key, pub = signer
    bundle, state = tmp_path / "pci.tar.gz", tmp_path / "state"
    revisions = [f"load{i}" for i in range(5)]
    raws = {r: make_bundle(tmp_path, key, r) for r in revisions}
    put(bundle, raws[revisions[0]])
    gw = start(pg, tmp_path / "gw", policy_yaml(str(bundle), pub, state, POLL))
    script = tmp_path / "bench.sql"
    script.write_text(PGBENCH_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGHOST="127.0.0.1", PGPORT=str(gw.port), PGUSER="bench",
               PGPASSWORD=gw.token(subject="bench"), PGDATABASE="payments",
               PGSSLMODE="disable", PGCONNECT_TIMEOUT="10")
    bench = subprocess.Popen(
        [str(BIN_DIR / "pgbench"), "-n", "-M", "simple", "-c", "4", "-j", "2", "-T", "12",
         "-f", str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        delays = []
        for rev in revisions[1:]:
            put(bundle, raws[rev])
            delays.append(wait_for(lambda rev=rev: serving(gw, sslmode="disable") == rev, 10,
                                   rev))
            time.sleep(0.5)
        out, err = bench.communicate(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
        gw.stop()
    assert bench.returncode == 0, out + err
    processed = int(re.search(r"number of transactions actually processed: (\d+)", out)[1])
    failed = re.search(r"number of failed transactions: (\d+)", out)
    assert processed > 100, out
    assert failed is not None and int(failed[1]) == 0, out
    assert max(delays) < POLL * 1.1 + 3.0, delays
    activated = [e["revision"] for e in events(gw, "bundle.activated")]
    assert activated == revisions, activated
    assert all(archived(state, raws[r]) for r in revisions)
    assert gw.proc is not None and gw.proc.returncode == 0, gw.log_text()[-3000:]
