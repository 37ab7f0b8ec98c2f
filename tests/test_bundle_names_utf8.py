"""Bundle entries whose names are not UTF-8 crash the bundle tools and loader
(UnicodeEncodeError from sorting by name.encode("utf-8")) instead of being refused with
the entry named."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.bundle.errors import BundleError
from gateway.bundle.loader import load_bundle
from gateway.bundle.signing import sign_bundle_files, signatures_json

REPO = Path(__file__).resolve().parents[1]
POLICY = b'package pgwarden\nimport rego.v1\ndecision := {"allow": true}\n'


def pgwarden(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True,
                          timeout=60, check=False, cwd=REPO)


def tarball(members: list[tuple[str, bytes]]) -> bytes:
    """A .tar.gz whose names are written as bytes (surrogate escapes → raw bytes)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(
            fileobj=gz, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8",
            errors="surrogateescape") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def signed_dir(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    pub = tmp_path / "bundle.pub"
    pub.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    d = tmp_path / "bundle"
    (d / "pgwarden").mkdir(parents=True)
    (d / "pgwarden" / "p.rego").write_bytes(POLICY)
    (d / ".signatures.json").write_bytes(
        signatures_json(sign_bundle_files({"pgwarden/p.rego": POLICY}, key)))
    return d, pub


def test_verify_signed_directory_with_a_non_utf8_file_name_fails_cleanly(
        signed_dir: tuple[Path, Path]) -> None:
    """A stray file whose name is not UTF-8 (an editor's or another OS's leftover) in a
    signed directory: `bundle verify` must fail naming it (exit 1, DESIGN §7), not die
    with a Python traceback."""
    d, pub = signed_dir
    assert pgwarden("bundle", "verify", str(d), "--key", str(pub)).returncode == 0
    fd = os.open(os.fsencode(str(d)) + b"/notes\xff.txt", os.O_CREAT | os.O_WRONLY)
    os.close(fd)
    r = pgwarden("bundle", "verify", str(d), "--key", str(pub))
    assert b"Traceback" not in r.stderr, r.stderr.decode(errors="replace")[-800:]
    assert r.returncode == 1
    assert r.stderr.startswith(b"bundle verify: FAILED: ")


def test_policy_check_of_a_bundle_with_a_non_utf8_member_name_fails_cleanly(
        tmp_path: Path) -> None:
    """`pgwarden policy check B.tar.gz` on a tarball with a .rego member whose name is
    not UTF-8: a clear error (exit 1 or 2), not a traceback."""
    bundle = tmp_path / "b.tar.gz"
    bundle.write_bytes(tarball([("pgwarden/p.rego", POLICY),
                                ("pgwarden/\udcff.rego", b"package pgwarden.x\n")]))
    r = pgwarden("policy", "check", str(bundle))
    assert b"Traceback" not in r.stderr, r.stderr.decode(errors="replace")[-800:]
    assert r.returncode in (1, 2)


def test_loader_refuses_a_non_utf8_member_name_with_a_bundle_error(tmp_path: Path) -> None:
    """load_bundle raises BundleError for every bad bundle (its docstring); the reloader
    otherwise reports only 'the bundle could not be loaded (UnicodeEncodeError)' with no
    file. Here it leaks a UnicodeEncodeError."""
    bundle = tmp_path / "b.tar.gz"
    bundle.write_bytes(tarball([("pgwarden/p.rego", POLICY),
                                ("pgwarden/\udcff.rego", b"package pgwarden.x\n")]))
    with pytest.raises(BundleError):
        load_bundle(bundle, allow_unsigned=True)
