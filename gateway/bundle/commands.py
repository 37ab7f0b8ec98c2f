"""``pgwarden bundle build|verify|inspect`` and ``pgwarden policy check``.

Wiring (``gateway/cli.py``)::

    from gateway.bundle import commands as bundle_commands
    bundle_commands.register(sub)                   # the `bundle` group
    bundle_commands.register_policy_check(psub)     # `policy check`
    ...
    if getattr(args, "handler", None):              # in main(), before other dispatch
        return args.handler(args)

Every parser sets ``handler`` to a function ``(args) -> exit status``. Importing this
module is cheap (argparse only); the work is imported when a command runs.

Exit status (DESIGN §7): 0 success, 1 a failed check (verification, a check that
found errors), 2 a usage or input error with a message that says what to fix.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "cmd_build",
    "cmd_inspect",
    "cmd_verify",
    "register",
    "register_policy_check",
    "run",
]

ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
              "ES256", "ES384", "ES512", "EdDSA")


def register(sub: Any) -> argparse.ArgumentParser:
    """Add the ``bundle`` command group to ``sub`` (an argparse subparsers object)."""
    b = sub.add_parser("bundle", help="build, sign, verify and inspect policy bundles")
    bsub = b.add_subparsers(dest="bundle_action", required=True)

    bb = bsub.add_parser("build", help="pack a policy directory into a (signed) .tar.gz")
    bb.add_argument("dir", help="directory of .rego and data.json/data.yaml files")
    bb.add_argument("-o", "--output", required=True, help="OUT.tar.gz")
    bb.add_argument("--revision", help="manifest revision (default: the directory's "
                    ".manifest, else empty)")
    bb.add_argument("--root", action="append", default=None, metavar="PATH",
                    help="manifest root (repeatable; default: the directory's, else \"\")")
    bb.add_argument("--signing-key", help="PEM private key: sign the bundle")
    bb.add_argument("--signing-alg", choices=ALGORITHMS,
                    help="default: RS256 for RSA, ES256/384/512 by curve, EdDSA")
    bb.add_argument("--signing-key-id", default="default",
                    help="kid of the signature (default: default, as `opa build`)")
    bb.add_argument("--claims-file", help="JSON object merged into the signed payload "
                    "(e.g. {\"scope\": \"prod\"})")
    bb.set_defaults(handler=run)

    bv = bsub.add_parser("verify", help="check a bundle's signature; exit 1 on any failure")
    bv.add_argument("bundle", help="a .tar.gz, a signed directory, or an http(s) URL")
    bv.add_argument("--key", required=True, help="PEM public key or certificate")
    bv.add_argument("--key-id", default="default", help="expected key id (default: default)")
    bv.add_argument("--scope", default="", help="expected scope (default: none)")
    bv.add_argument("--alg", choices=ALGORITHMS, help="require this signing algorithm")
    bv.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                    help="files left out of verification (repeatable)")
    bv.set_defaults(handler=run)

    bi = bsub.add_parser("inspect", help="revision, roots, files, hashes and signer")
    bi.add_argument("bundle", help="a .tar.gz, a directory, or an http(s) URL")
    bi.add_argument("--key", help="also verify the signature with this public key")
    bi.add_argument("--json", action="store_true", help="machine-readable output")
    bi.set_defaults(handler=run)
    return b


def register_policy_check(psub: Any) -> argparse.ArgumentParser:
    """Add ``check`` to the ``policy`` sub-commands."""
    pc = psub.add_parser("check", help="compile errors (file:line) and what OPA has "
                         "that the embedded engine lacks")
    pc.add_argument("paths", nargs="*", default=["policies"],
                    help="directories, .rego files or bundles (default: policies)")
    pc.add_argument("--format", default="pretty", choices=["pretty", "json"])
    pc.add_argument("--entrypoint", help="must be defined (default: the manifest's, else "
                    "data.pgwarden.decision, which only warns when missing)")
    pc.add_argument("--strict", action="store_true", help="warnings fail the check too")
    pc.set_defaults(handler=_run_policy_check)
    return pc


def _run_policy_check(args: argparse.Namespace) -> int:
    from gateway.policy.commands import cmd_policy_check

    return cmd_policy_check(args.paths, args.format, args.entrypoint, strict=args.strict)


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None
        ) -> int:
    """Dispatch a parsed ``bundle`` command."""
    action = getattr(args, "bundle_action", None)
    if action == "build":
        return cmd_build(args.dir, args.output, revision=args.revision, roots=args.root,
                         signing_key=args.signing_key, signing_alg=args.signing_alg,
                         keyid=args.signing_key_id, claims_file=args.claims_file,
                         out=out, err=err)
    if action == "verify":
        return cmd_verify(args.bundle, args.key, keyid=args.key_id, scope=args.scope,
                          alg=args.alg, exclude=args.exclude, out=out, err=err)
    if action == "inspect":
        return cmd_inspect(args.bundle, key=args.key, as_json=args.json, out=out, err=err)
    print(f"bundle: unknown action {action!r}", file=err or sys.stderr)
    return 2


# -- build --------------------------------------------------------------------------------


def cmd_build(
    src: str,
    output: str,
    *,
    revision: str | None = None,
    roots: list[str] | None = None,
    signing_key: str | None = None,
    signing_alg: str | None = None,
    keyid: str | None = "default",
    claims_file: str | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    from gateway.bundle.build import build_bundle
    from gateway.bundle.errors import BundleError
    from gateway.bundle.signing import KeyFileError, check_algorithm, load_private_key

    out, err = out or sys.stdout, err or sys.stderr
    key = None
    if signing_key is not None:
        try:
            key = load_private_key(signing_key)
        except KeyFileError as exc:
            print(f"bundle build: --signing-key {signing_key}: {exc}", file=err)
            return 2
        if signing_alg is not None:
            problem = check_algorithm(signing_alg, key)
            if problem:
                print(f"bundle build: --signing-alg: {problem}", file=err)
                return 2
    elif signing_alg or claims_file:
        print("bundle build: --signing-alg/--claims-file need --signing-key", file=err)
        return 2
    claims = None
    if claims_file is not None:
        try:
            claims = json.loads(Path(claims_file).read_text(encoding="utf-8-sig"))
        except (OSError, ValueError) as exc:
            print(f"bundle build: --claims-file {claims_file}: {exc}", file=err)
            return 2
        if not isinstance(claims, dict) or "files" in claims:
            print(f"bundle build: --claims-file {claims_file}: must be a JSON object "
                  "without 'files'", file=err)
            return 2
    if not Path(src).is_dir():
        print(f"bundle build: {src}: not a directory", file=err)
        return 2
    try:
        raw = build_bundle(Path(src), revision=revision, roots=roots, signing_key=key,
                           signing_alg=signing_alg, keyid=keyid or None, claims=claims)
    except BundleError as exc:
        print(f"bundle build: {exc}", file=err)
        return 2
    try:
        dest = Path(output)
        tmp = dest.with_name(dest.name + ".tmp")
        tmp.write_bytes(raw)
        tmp.replace(dest)
    except OSError as exc:
        print(f"bundle build: {output}: cannot write: {exc.strerror or exc}", file=err)
        return 2
    import hashlib

    from gateway.bundle.signing import default_algorithm

    signed = (f"signed ({signing_alg or default_algorithm(key)}, kid {keyid!r})" if key
              else "unsigned")
    print(f"wrote {output}: sha256 {hashlib.sha256(raw).hexdigest()}, {signed}", file=out)
    if revision is None:
        print("note: no --revision given; decisions will name the manifest's revision or "
              "dev-<content hash>", file=err)
    return 0


# -- verify -------------------------------------------------------------------------------


def cmd_verify(
    bundle: str,
    key_path: str,
    *,
    keyid: str = "default",
    scope: str = "",
    alg: str | None = None,
    exclude: list[str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    from gateway.bundle.errors import BundleError
    from gateway.bundle.loader import load_bundle
    from gateway.bundle.signing import KeyFileError, load_public_key
    from gateway.bundle.verify import VerificationConfig

    out, err = out or sys.stdout, err or sys.stderr
    try:
        key = load_public_key(key_path)
    except KeyFileError as exc:
        print(f"bundle verify: --key {key_path}: {exc}", file=err)
        return 2
    if not _exists(bundle):
        print(f"bundle verify: {bundle}: no such file or directory", file=err)
        return 2
    config = VerificationConfig(key, keyid=keyid, scope=scope, algorithm=alg,
                                exclude=tuple(exclude or ()))
    try:
        loaded = load_bundle(bundle, verification=config)
    except BundleError as exc:
        print(f"bundle verify: FAILED: {exc.file or bundle}: {exc.reason}", file=err)
        return 1
    sig = loaded.signature
    assert sig is not None
    print(f"OK {bundle}: revision {loaded.revision!r}, sha256 {loaded.sha256}, "
          f"{len(sig.files)} files signed by key id {config.keyid!r} ({sig.algorithm})"
          + (f", scope {sig.scope!r}" if sig.scope else ""), file=out)
    return 0


def _exists(location: str) -> bool:
    return location.lower().startswith(("http://", "https://")) or Path(location).exists()


# -- inspect ------------------------------------------------------------------------------


def cmd_inspect(
    bundle: str,
    *,
    key: str | None = None,
    as_json: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    import hashlib

    from gateway.bundle.archive import MANIFEST, SIGNATURES
    from gateway.bundle.canonical import CanonicalError, file_digest
    from gateway.bundle.errors import BundleError
    from gateway.bundle.loader import read_location
    from gateway.bundle.verify import decode_token, signature_info

    out, err = out or sys.stdout, err or sys.stderr
    if not _exists(bundle):
        print(f"bundle inspect: {bundle}: no such file or directory", file=err)
        return 2
    try:
        files, raw, _origin = read_location(bundle)
    except BundleError as exc:
        print(f"bundle inspect: {exc}", file=err)
        return 1
    manifest: dict[str, Any] = {}
    if MANIFEST in files:
        try:
            manifest = json.loads(files[MANIFEST].decode("utf-8-sig"))
        except (UnicodeDecodeError, ValueError):
            manifest = {"error": "unreadable .manifest"}
    signer: dict[str, Any] | None = None
    listed: dict[str, tuple[str, str]] = {}
    if SIGNATURES in files:
        try:
            doc = json.loads(files[SIGNATURES])
            header, payload, _, _ = decode_token(doc["signatures"][0])
            info = signature_info(header, payload, verified=False)
            signer = info.to_dict()
            listed = {n: (f.hash.lower(), f.algorithm) for n, f in info.files.items()}
        except (BundleError, ValueError, KeyError, IndexError, TypeError) as exc:
            signer = {"error": f"unreadable signature: {exc}"}
    entries = []
    for name, content in files.items():
        if name == SIGNATURES:
            continue
        try:
            digest = file_digest(name, content)
        except CanonicalError as exc:
            digest = f"error: {exc}"
        entry: dict[str, Any] = {"name": name, "size": len(content), "sha256": digest}
        if signer is not None and "error" not in signer:
            want, alg = listed.get(name, ("", ""))
            try:
                entry["signed"] = bool(want) and file_digest(name, content, alg) == want
            except (KeyError, CanonicalError):
                entry["signed"] = False
        entries.append(entry)
    doc_out: dict[str, Any] = {
        "bundle": bundle,
        "sha256": hashlib.sha256(raw).hexdigest(),
        "revision": manifest.get("revision", ""),
        "roots": manifest.get("roots", [""]),
        "rego_version": manifest.get("rego_version"),
        "metadata": manifest.get("metadata", {}),
        "signature": signer,
        "files": entries,
    }
    status = 0
    if key is not None:
        status = cmd_verify(bundle, key, out=io.StringIO(), err=err)
        doc_out["verified"] = status == 0
        if signer is not None and "error" not in signer:
            signer["verified"] = status == 0
    if as_json:
        out.write(json.dumps(doc_out, indent=2) + "\n")
    else:
        w = out.write
        w(f"bundle    {bundle}\n")
        w(f"sha256    {doc_out['sha256']}\n")
        w(f"revision  {doc_out['revision']!r}\n")
        w(f"roots     {json.dumps(doc_out['roots'])}\n")
        if doc_out["rego_version"] is not None:
            w(f"rego      v{doc_out['rego_version']}\n")
        if doc_out["metadata"]:
            w(f"metadata  {json.dumps(doc_out['metadata'], sort_keys=True)}\n")
        if signer is None:
            w("signature none (unsigned)\n")
        elif "error" in signer:
            w(f"signature {signer['error']}\n")
        else:
            state = ("verified" if signer.get("verified") else
                     "NOT verified (use --key)" if key is None else "FAILED verification")
            w(f"signature {signer['algorithm']} kid={signer['keyid']!r} "
              f"scope={signer['scope']!r} iss={signer['iss']!r} iat={signer['iat']!r}: "
              f"{state}\n")
        w(f"files     {len(entries)}\n")
        for e in entries:
            mark = "" if "signed" not in e else ("  signed" if e["signed"] else "  NOT SIGNED")
            w(f"  {e['sha256'][:16]}  {e['size']:>9}  {e['name']}{mark}\n")
    out.flush()
    return status


def main(argv: list[str] | None = None) -> int:
    """``python -m gateway.bundle.commands bundle ...|policy check ...`` (what the
    ``pgwarden`` command does once wired)."""
    parser = argparse.ArgumentParser(prog="pgwarden")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    pol = sub.add_parser("policy")
    register_policy_check(pol.add_subparsers(dest="action", required=True))
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
