"""Hot reload after a rejection: a URL bundle refused for its signing key, once the key
file is rotated; and what the audit trail says of a rejected bundle."""

from __future__ import annotations

import hashlib
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

from conftest import PgBackend, audit_yaml, upstreams_for
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from test_bundle_reload import (  # noqa: F401 (bundle_server: a fixture)
    POLICY,
    BundleServer,
    bundle_server,
    serving,
)

from gateway.bundle.archive import read_tarball, write_tarball
from gateway.bundle.build import build_bundle
from gateway.devtools.harness import GatewayProcess


def pub_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def make_bundle(tmp: Path, key: ec.EllipticCurvePrivateKey, revision: str) -> bytes:
    d = tmp / f"src-{revision}"
    (d / "pgwarden").mkdir(parents=True, exist_ok=True)
    (d / "pgwarden" / "policy.rego").write_text(POLICY)
    (d / "pgwarden" / "data.json").write_text(json.dumps({"revision": revision}))
    return build_bundle(d, revision=revision, signing_key=key)


def policy_yaml(bundle: str, pub: Path, state: Path, poll: float) -> str:
    return "\n".join(["policy:", f"  bundle: {json.dumps(bundle)}",
                      f"  verification_key: {{file: {json.dumps(str(pub))}}}",
                      f"  state_dir: {json.dumps(str(state))}",
                      f"  poll_interval: {poll}"]) + "\n"


def wait_for(check: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.05)
    return False


def events(gw: GatewayProcess, name: str) -> list[dict[str, object]]:
    return [d for d in gw.logs if d.get("event") == name]


def test_url_bundle_rejected_for_its_key_activates_after_the_key_file_is_rotated(
        pg: PgBackend, tmp_path: Path, bundle_server: BundleServer) -> None:  # noqa: F811
    """The reloader re-reads the verification key on every reload "so a rotated key
    needs no restart". A URL bundle signed with the new key, rejected while the key file
    still held the old one, must be activated by a SIGHUP once the key file is rotated:
    nothing about the bundle was wrong."""
    old, new = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    pub = tmp_path / "bundle.pub"
    pub.write_bytes(pub_pem(old))
    bundle_server.body = make_bundle(tmp_path, old, "r1")
    gw = GatewayProcess(tmp_path / "gw", upstreams_for(pg),
                        policy_yaml=policy_yaml(bundle_server.url, pub, tmp_path / "state", 0))
    gw.start()
    try:
        assert serving(gw) == "r1"
        assert gw.proc is not None
        # CI starts signing with the new key before the gateway's key file is rotated.
        bundle_server.body = make_bundle(tmp_path, new, "r2")
        gw.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: bool(events(gw, "bundle.rejected")), 15)
        assert "does not verify" in str(events(gw, "bundle.rejected")[0]["reason"])
        assert serving(gw) == "r1"
        # The operator rotates the key file and asks for a reload.
        pub.write_bytes(pub_pem(new))
        gw.proc.send_signal(signal.SIGHUP)
        activated = wait_for(lambda: any(e.get("revision") == "r2"
                                         for e in events(gw, "bundle.activated")), 15)
        assert activated and serving(gw) == "r2", (
            "the bundle stayed refused after the key rotation "
            f"(rejected events: {events(gw, 'bundle.rejected')})")
    finally:
        gw.stop()


def _rejected_audit_record(pg: PgBackend, tmp_path: Path) -> tuple[dict[str, object], bytes]:
    """Start an audited gateway on a signed file bundle, replace the file with a tampered
    copy (data.json changed after signing), SIGHUP: (the bundle.rejected audit record,
    the tampered tarball)."""
    key = ec.generate_private_key(ec.SECP256R1())
    pub = tmp_path / "bundle.pub"
    pub.write_bytes(pub_pem(key))
    bundle = tmp_path / "pci.tar.gz"
    bundle.write_bytes(make_bundle(tmp_path, key, "r1"))
    audit_dir = tmp_path / "audit"
    gw = GatewayProcess(tmp_path / "gw", upstreams_for(pg), extra_yaml=audit_yaml(tmp_path),
                        policy_yaml=policy_yaml(str(bundle), pub, tmp_path / "state", 0))
    gw.start()
    try:
        files = read_tarball(make_bundle(tmp_path, key, "r2"))
        files["pgwarden/data.json"] = b'{"revision": "evil"}'
        tampered = write_tarball(files)
        bundle.write_bytes(tampered)
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: bool(events(gw, "bundle.rejected")), 15)
        assert events(gw, "bundle.rejected")[0]["file"] == "pgwarden/data.json"
        assert serving(gw) == "r1"
    finally:
        gw.stop()
    recs = [json.loads(line) for f in sorted(audit_dir.glob("*.jsonl"))
            for line in f.read_text().splitlines() if line.strip()]
    rejected = [r for r in recs if r["type"] == "bundle.rejected"]
    assert len(rejected) == 1
    return rejected[0], tampered


def test_bundle_rejected_audit_record_names_the_file_at_fault(
        pg: PgBackend, tmp_path: Path) -> None:
    """A rejection must leave an audit record with a clear reason. The reloader knows
    the file at fault (the log line has `file`), but the `bundle.rejected` audit record
    carries only the reason text, which for a tampered or added file does not say which
    file: the trail cannot tell an auditor what was wrong with the bundle."""
    record, _ = _rejected_audit_record(pg, tmp_path)
    assert "pgwarden/data.json" in json.dumps(record), record


def test_bundle_rejected_audit_record_names_the_rejected_bundle_hash(
        pg: PgBackend, tmp_path: Path) -> None:
    """docs/audit.md: `bundle.rejected` has `bundle_hash`. For a file bundle that fails
    verification it is null (the reloader hashes the bytes only when it downloaded them),
    so the trail does not say which bundle was refused."""
    record, tampered = _rejected_audit_record(pg, tmp_path)
    assert record["bundle_hash"] == hashlib.sha256(tampered).hexdigest(), record
