"""``bundle build``: a directory of Rego and data → a deterministic, optionally signed
``.tar.gz`` that OPA reads too.

The directory's ``*.rego``, ``data.json``/``data.yaml``/``data.yml`` keep their paths;
hidden files and directories and other files are left out. ``.manifest`` is written
with the directory's manifest (if any) as a base: ``revision`` (``--revision`` wins),
``roots`` (``--root`` wins; default ``[""]``, everything), ``rego_version`` (default 1,
the only syntax the embedded engine implements), ``metadata`` kept. The result is loaded
back (parse errors, data conflicts, roots) before anything is written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gateway.bundle.archive import MANIFEST, SIGNATURES, collect_policy_files, write_tarball
from gateway.bundle.errors import BundleError
from gateway.bundle.signing import (
    DEFAULT_KEY_ID,
    PrivateKey,
    sign_bundle_files,
    signatures_json,
)
from gateway.policy.errors import PolicyError
from gateway.policy.source import PolicySource

__all__ = ["build_bundle", "bundle_files"]


def bundle_files(
    src: Path,
    *,
    revision: str | None = None,
    roots: Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, bytes]:
    """The files of the bundle (manifest included), checked, not yet signed."""
    files = collect_policy_files(src)
    manifest: dict[str, Any] = {}
    if MANIFEST in files:
        try:
            manifest = json.loads(files[MANIFEST].decode("utf-8-sig"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise BundleError(MANIFEST, f"invalid JSON: {exc}") from None
        if not isinstance(manifest, dict):
            raise BundleError(MANIFEST, "the manifest must be a JSON object")
    if revision is not None:
        manifest["revision"] = revision
    manifest.setdefault("revision", "")
    if roots:
        manifest["roots"] = [r.strip("/") for r in roots]
    manifest.setdefault("roots", [""])
    manifest.setdefault("rego_version", 1)
    if metadata:
        manifest["metadata"] = {**manifest.get("metadata", {}), **metadata}
    files[MANIFEST] = (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False)
                       + "\n").encode("utf-8")
    try:
        PolicySource.from_files(files, origin=str(src))
    except PolicyError as exc:
        raise BundleError(exc.location or str(src), exc.message) from None
    return files


def build_bundle(
    src: Path,
    *,
    revision: str | None = None,
    roots: Sequence[str] | None = None,
    signing_key: PrivateKey | None = None,
    signing_alg: str | None = None,
    keyid: str | None = DEFAULT_KEY_ID,
    claims: Mapping[str, Any] | None = None,
) -> bytes:
    """The ``.tar.gz`` bytes (signed when ``signing_key`` is given)."""
    files = bundle_files(src, revision=revision, roots=roots)
    if signing_key is not None:
        token = sign_bundle_files(files, signing_key, signing_alg, keyid=keyid, claims=claims)
        files[SIGNATURES] = signatures_json(token)
    return write_tarball(files)
