"""Load a policy bundle from a file, a directory or an http(s) URL, verified.

    bundle = load_bundle("bundles/pci.tar.gz", verification=VerificationConfig(key))
    engine = PolicyEngine(bundle.source, bundle_hash=bundle.sha256, probe=True)

Rules:

* a signed bundle (it has ``.signatures.json``) is always verified, and needs a key;
* an unsigned bundle is accepted only with ``allow_unsigned=True`` (development);
* a key configured and no ``allow_unsigned`` → the bundle must be signed;
* ``skip_verification=True`` (``policy eval``/``test``/``check``, ``bundle inspect``)
  reads without checking anything.

A tarball's identity is its revision and the sha256 of its bytes (``sha256``); a
directory is packed deterministically (``archive.write_tarball``) so it gets a stable
sha256 and can be archived like any bundle. Roots are enforced by ``PolicySource``:
every package and every data path must sit under a manifest root.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.bundle import remote
from gateway.bundle.archive import (
    MANIFEST,
    MAX_TOTAL_BYTES,
    SIGNATURES,
    collect_policy_files,
    read_directory,
    read_tarball,
    write_tarball,
)
from gateway.bundle.errors import BundleError
from gateway.bundle.verify import SignatureInfo, VerificationConfig, verify_bundle
from gateway.policy.errors import PolicyError
from gateway.policy.source import PolicySource

__all__ = ["LoadedBundle", "load_bundle", "load_bundle_bytes", "read_location"]


@dataclass(frozen=True)
class LoadedBundle:
    source: PolicySource
    revision: str
    sha256: str  # of the tarball bytes (``raw``)
    raw: bytes = field(repr=False)  # the tarball (for a directory: its deterministic packing)
    signature: SignatureInfo | None  # None: unsigned (or not checked)
    origin: str
    files: Mapping[str, bytes] = field(repr=False)

    @property
    def signed(self) -> bool:
        return self.signature is not None

    def describe(self) -> dict[str, Any]:
        return {"revision": self.revision, "sha256": self.sha256, "origin": self.origin,
                "signed": self.signed,
                "keyid": self.signature.keyid if self.signature else None}


def read_location(location: str | Path) -> tuple[dict[str, bytes], bytes, str]:
    """(files, tarball bytes, origin) of a file, directory or URL, nothing checked."""
    loc = str(location)
    if remote.is_url(loc):
        fetched = remote.fetch(loc)
        assert fetched.raw is not None
        return read_tarball(fetched.raw, loc), fetched.raw, loc
    path = Path(loc)
    if path.is_dir():
        signed = (path / SIGNATURES).is_file()
        files = read_directory(path) if signed else collect_policy_files(path)
        return files, write_tarball(files), str(path)
    try:
        size = path.stat().st_size
        if size > MAX_TOTAL_BYTES:
            raise BundleError(loc, f"larger than {MAX_TOTAL_BYTES} bytes")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(loc, "no such file or directory") from None
    except OSError as exc:
        raise BundleError(loc, f"cannot read: {exc.strerror or exc}") from None
    return read_tarball(raw, loc), raw, loc


def load_bundle(
    location: str | Path,
    *,
    verification: VerificationConfig | None = None,
    allow_unsigned: bool = False,
    skip_verification: bool = False,
) -> LoadedBundle:
    """Read, verify and parse a bundle; raises BundleError (VerificationError,
    ArchiveError, FetchError) naming the file and the reason."""
    files, raw, origin = read_location(location)
    return _finish(files, raw, origin, verification, allow_unsigned, skip_verification)


def load_bundle_bytes(
    raw: bytes,
    origin: str,
    *,
    verification: VerificationConfig | None = None,
    allow_unsigned: bool = False,
    skip_verification: bool = False,
) -> LoadedBundle:
    """Like :func:`load_bundle` for tarball bytes already in hand (a download, a
    persisted copy)."""
    files = read_tarball(raw, origin)
    return _finish(files, raw, origin, verification, allow_unsigned, skip_verification)


def _finish(files: dict[str, bytes], raw: bytes, origin: str,
            verification: VerificationConfig | None, allow_unsigned: bool,
            skip_verification: bool) -> LoadedBundle:
    signature: SignatureInfo | None = None
    if not skip_verification:
        if SIGNATURES in files or not allow_unsigned:
            if SIGNATURES not in files and verification is None:
                raise BundleError(origin, "the bundle is not signed; configure a "
                                  "verification key, or allow_unsigned for development")
            signature = verify_bundle(files, verification)
    policy_files = {k: v for k, v in files.items() if k != SIGNATURES}
    sha256 = hashlib.sha256(raw).hexdigest()
    try:
        source = PolicySource.from_files(policy_files, origin=origin, archive_sha256=sha256)
    except PolicyError as exc:
        raise BundleError(exc.location or origin, exc.message) from None
    _check_manifest(source.manifest)
    return LoadedBundle(source, source.revision, sha256, raw, signature, origin, files)


def _check_manifest(manifest: Mapping[str, Any]) -> None:
    version = manifest.get("rego_version")
    if version is not None and (isinstance(version, bool) or version not in (0, 1)):
        raise BundleError(MANIFEST, f"rego_version must be 0 or 1, not {version!r}")
    per_file = manifest.get("file_rego_versions")
    if per_file is not None and (
        not isinstance(per_file, dict)
        or any(isinstance(v, bool) or v not in (0, 1) for v in per_file.values())
    ):
        raise BundleError(MANIFEST, "file_rego_versions must map globs to 0 or 1")
    if manifest.get("wasm"):
        raise BundleError(MANIFEST, "wasm modules are not supported by the embedded engine")
