"""Policy bundles: OPA's format and signature scheme, loading, verification, hot reload.

Modules (import them directly; this package imports nothing heavy so that the CLI can
register its sub-commands without loading regopy):

* ``archive``   — safe ``.tar.gz`` reading (caps, no links, no ``..``) and deterministic
  building from a directory.
* ``canonical`` — OPA's file hashing: canonical JSON for ``.manifest``/``data.json``/
  ``data.yaml``, raw bytes for everything else.
* ``signing``   — compact JWS over the file list (RS/PS/ES 256/384/512, EdDSA), keys.
* ``verify``    — OPA's verification order; failures are ``VerificationError(file, reason)``.
* ``loader``    — ``load_bundle(location, ...)`` → ``LoadedBundle`` (file, directory, URL).
* ``remote``    — HTTP(S) fetch with ``ETag``/``If-None-Match``.
* ``reloader``  — hot reload in the gateway: verify → compile → swap, last good kept.
* ``commands``  — ``pgwarden bundle build|verify|inspect`` and ``pgwarden policy check``.
"""

from gateway.bundle.errors import ArchiveError, BundleError, VerificationError

__all__ = ["ArchiveError", "BundleError", "VerificationError"]
