"""``pgwarden bundle build|verify|inspect`` and ``policy check``/``test``/``eval`` on bundles
(through ``gateway.bundle.commands.main``, the parser the CLI wires in)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.bundle.archive import read_tarball, write_tarball
from gateway.bundle.commands import main

POLICY = Path(__file__).resolve().parents[1] / "policies" / "pci"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("keys")
    key = ec.generate_private_key(ec.SECP256R1())
    (d / "signer.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (d / "signer.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return d / "signer.pem", d / "signer.pub"


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_build_verify_inspect(tmp_path: Path, keys: tuple[Path, Path],
                              capsys: pytest.CaptureFixture[str]) -> None:
    priv, pub = keys
    out_file = tmp_path / "pci.tar.gz"
    claims = tmp_path / "claims.json"
    claims.write_text('{"scope": "prod", "iss": "ci"}')
    code, out, err = cli(capsys, "bundle", "build", str(POLICY), "-o", str(out_file),
                         "--revision", "2024.06.1", "--signing-key", str(priv),
                         "--claims-file", str(claims))
    assert code == 0, err
    assert "signed (ES256, kid 'default')" in out
    code, out, err = cli(capsys, "bundle", "verify", str(out_file), "--key", str(pub),
                         "--scope", "prod")
    assert code == 0, err
    assert "revision '2024.06.1'" in out and "scope 'prod'" in out
    code, out, err = cli(capsys, "bundle", "inspect", str(out_file), "--json")
    doc = json.loads(out)
    assert code == 0 and doc["revision"] == "2024.06.1" and doc["roots"] == [""]
    assert doc["signature"]["algorithm"] == "ES256" and doc["signature"]["iss"] == "ci"
    assert doc["signature"]["verified"] is False
    assert {f["name"] for f in doc["files"]} >= {".manifest", "data.json", "pgwarden.rego"}
    assert all(f["signed"] for f in doc["files"])
    code, out, _ = cli(capsys, "bundle", "inspect", str(out_file), "--key", str(pub))
    assert code == 1  # the scope is not the default one
    code, out, _ = cli(capsys, "bundle", "inspect", str(POLICY))
    assert code == 0 and "signature none (unsigned)" in out and "pgwarden.rego" in out


def test_verify_says_which_file_and_why(tmp_path: Path, keys: tuple[Path, Path],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    priv, pub = keys
    bundle = tmp_path / "b.tar.gz"
    assert cli(capsys, "bundle", "build", str(POLICY), "-o", str(bundle), "--revision", "r",
               "--signing-key", str(priv))[0] == 0
    files = read_tarball(bundle.read_bytes())
    files["pgwarden.rego"] += b"\n# tampered\n"
    bundle.write_bytes(write_tarball(files))
    code, out, err = cli(capsys, "bundle", "verify", str(bundle), "--key", str(pub))
    assert code == 1 and out == ""
    assert "FAILED: pgwarden.rego: SHA-256 digest mismatch" in err
    code, _, err = cli(capsys, "bundle", "verify", str(bundle), "--key", str(tmp_path / "no"))
    assert code == 2 and "cannot read" in err
    code, _, err = cli(capsys, "bundle", "verify", str(tmp_path / "none.tar.gz"),
                       "--key", str(pub))
    assert code == 2 and "no such file" in err
    unsigned = tmp_path / "u.tar.gz"
    assert cli(capsys, "bundle", "build", str(POLICY), "-o", str(unsigned))[0] == 0
    code, _, err = cli(capsys, "bundle", "verify", str(unsigned), "--key", str(pub))
    assert code == 1 and "FAILED: .signatures.json: missing" in err


def test_build_usage_errors(tmp_path: Path, keys: tuple[Path, Path],
                            capsys: pytest.CaptureFixture[str]) -> None:
    priv, _ = keys
    out_file = str(tmp_path / "x.tar.gz")
    code, _, err = cli(capsys, "bundle", "build", str(POLICY), "-o", out_file,
                       "--signing-key", str(priv), "--signing-alg", "RS256")
    assert code == 2 and "does not match the key" in err
    code, _, err = cli(capsys, "bundle", "build", str(tmp_path / "nope"), "-o", out_file)
    assert code == 2 and "not a directory" in err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.rego").write_text("package other\n")
    code, _, err = cli(capsys, "bundle", "build", str(bad), "-o", out_file, "--root", "pgwarden")
    assert code == 2 and "x.rego:1: package other is outside the manifest roots" in err


def test_policy_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "p"
    d.mkdir()
    (d / "policy.rego").write_text(
        "package pgwarden\n\nimport rego.v1\n\n"
        'internal if net.cidr_contains("10.0.0.0/8", input.connection.client_addr)\n'
        'admin if regex.match("(?i)^admin", input.identity.subject)\n'
        'decision := {"allow": internal, "reasons": [], "mask": {}, '
        '"require_approval": false, "approvers": [], "row_limit": null, "db_role": null}\n')
    code, out, _ = cli(capsys, "policy", "check", str(d))
    assert code == 0, out
    assert "policy.rego:5:13: warning: unsupported-builtin: net.cidr_contains()" in out
    assert "policy.rego:6:" in out and "warning: regex-flags" in out
    assert "0 error(s), 2 warning(s)" in out
    assert cli(capsys, "policy", "check", "--strict", str(d))[0] == 1
    (d / "broken.rego").write_text("package pgwarden\n\nx := [1, 2\n")
    code, out, _ = cli(capsys, "policy", "check", "--format", "json", str(d))
    doc = json.loads(out)
    assert code == 1 and doc["errors"][0]["file"].endswith("broken.rego")
    assert doc["errors"][0]["line"] is not None
    assert cli(capsys, "policy", "check", str(tmp_path / "missing"))[0] == 2


def test_policy_commands_accept_a_bundle(tmp_path: Path, keys: tuple[Path, Path],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.policy.commands import cmd_policy_eval, cmd_policy_test

    priv, _ = keys
    bundle = tmp_path / "pci.tar.gz"
    assert cli(capsys, "bundle", "build", str(POLICY), "-o", str(bundle), "--revision", "r9",
               "--signing-key", str(priv))[0] == 0
    capsys.readouterr()
    code, out, _ = cli(capsys, "policy", "check", str(bundle))
    assert code == 0 and "0 error(s)" in out
    assert cmd_policy_test([str(bundle)], "junit") == 0
    junit = capsys.readouterr().out
    assert junit.startswith("<?xml") and "<testsuites" in junit and 'failures="0"' in junit
    doc = {"identity": {"subject": "ci", "issuer": "x", "groups": ["ci"], "claims": {},
                        "method": "jwt"},
           "connection": {"name": "payments", "database": "payments", "user": "ci",
                          "application_name": "", "client_addr": "127.0.0.1", "tls": True,
                          "networks": []},
           "session": {"id": "s", "started_at": "2024-01-01T00:00:00Z"},
           "statement": {"sql": "select 1", "fingerprint": "f", "command": "SELECT",
                         "kind": "read", "relations": [], "columns": [], "functions": [],
                         "has_where": False, "limit": None, "index": 0, "count": 1,
                         "protocol": "simple"},
           "approval": {"granted": False, "id": None}}
    (tmp_path / "in.json").write_text(json.dumps(doc))
    assert cmd_policy_eval(str(bundle), str(tmp_path / "in.json")) == 0
    decision = json.loads(capsys.readouterr().out)
    assert decision["bundle_revision"] == "r9"
