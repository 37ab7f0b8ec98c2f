"""A signed bundle activates only the policy data that was signed. The signature hashes a
structured file (data.json, data.yaml, .manifest) over a canonical reading of it, so two
files that read alike hash alike: the gateway must load the data exactly as it was
hashed, or a file changed after signing (`no` for `false` in YAML 1.1 vs 1.2, an octal
`0144` for `100`, a JSON NaN for the string "NaN") would still verify and change
decisions. Hostile structured files are rejected cleanly, without expanding aliases or
recursing without end, and the previous policy keeps serving. Found by an adversarial
probe."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.bundle.archive import write_tarball
from gateway.bundle.errors import BundleError
from gateway.bundle.loader import load_bundle_bytes
from gateway.bundle.reloader import BundleReloader
from gateway.bundle.signing import sign_bundle_files, signatures_json
from gateway.bundle.verify import VerificationConfig
from gateway.config.model import PolicyConfig

REGO = textwrap.dedent("""\
    package pgwarden

    import rego.v1

    default allowed := false

    allowed if {
        input.statement.kind == "write"
        data.pgwarden.allow_writes
    }

    decision := {"allow": allowed, "reasons": [], "mask": {}, "require_approval": false,
        "approvers": [], "row_limit": data.pgwarden.row_limit, "db_role": null}
    """)


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def signed(key: ec.EllipticCurvePrivateKey, **files: bytes) -> dict[str, bytes]:
    out = {".manifest": json.dumps({"revision": "r1", "roots": ["pgwarden"]}).encode(),
           "pgwarden/policy.rego": REGO.encode(), **files}
    out[".signatures.json"] = signatures_json(sign_bundle_files(out, key))
    return out


def load(files: dict[str, bytes], key: ec.EllipticCurvePrivateKey) -> Any:
    return load_bundle_bytes(write_tarball(files), "test",
                             verification=VerificationConfig(key.public_key()))


def _swapped(good: dict[str, bytes], name: str, content: bytes) -> dict[str, bytes]:
    bad = dict(good)  # (its .signatures.json is the one made for `good`)
    bad[name] = content
    return bad


@pytest.mark.parametrize("name,signed_text,tampered", [
    ("pgwarden/data.yaml", b"allow_writes: false\n", b"allow_writes: off\n"),
    ("pgwarden/data.yaml", b"allow_writes: false\n", b"allow_writes: no\n"),
    ("pgwarden/data.yaml", b"row_limit: 100\n", b"row_limit: 0144\n"),
    ("pgwarden/data.yaml", b"row_limit: 90\n", b"row_limit: 1:30\n"),
    ("pgwarden/data.json", b'{"x": "NaN"}', b'{"x": NaN}'),
    ("pgwarden/data.json", b'{"x": "Infinity"}', b'{"x": Infinity}'),
    ("pgwarden/data.json", '{"x": "\ufffd"}'.encode(), b'{"x": "\\ud800"}'),
])
def test_a_file_changed_after_signing_never_loads_other_data(
        key: ec.EllipticCurvePrivateKey, name: str, signed_text: bytes,
        tampered: bytes) -> None:
    good = signed(key, **{name: signed_text})
    expected = load(good, key).source.data
    try:
        got = load(_swapped(good, name, tampered), key).source.data
    except BundleError:
        return  # refused: fine
    assert got == expected  # what verified is what was signed


@pytest.mark.parametrize("name,content", [
    ("pgwarden/data.json", b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    (".manifest", b"[" * 100_000 + b"]" * 100_000),
])
def test_deep_nesting_is_a_clean_rejection(key: ec.EllipticCurvePrivateKey, name: str,
                                           content: bytes) -> None:
    with pytest.raises(BundleError):
        load(_swapped(signed(key, **{"pgwarden/data.json": b'{"a": 1}'}), name, content), key)


def test_yaml_aliases_are_refused_before_they_expand(key: ec.EllipticCurvePrivateKey
                                                     ) -> None:
    """Five levels of ten aliases: 10**5 leaves from a file under 400 bytes (each more
    level is ten times the time and memory, before any digest is compared)."""
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]']
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 6)]
    bomb = ("\n".join(lines) + "\n").encode()
    for name in ("pgwarden/data.json", ".manifest", "pgwarden/data.yaml"):
        data = "pgwarden/data.yaml" if name.endswith(".yaml") else "pgwarden/data.json"
        good = signed(key, **{data: b'{"a": 1}'})  # (the file is listed in the signature)
        with pytest.raises(BundleError, match="aliases"):
            load(_swapped(good, name, bomb), key)


def _reloader(tmp_path: Path, key: ec.EllipticCurvePrivateKey, files: dict[str, bytes]
              ) -> tuple[BundleReloader, Path, list[Any], list[str]]:
    pub = tmp_path / "pub.pem"
    pub.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    bundle = tmp_path / "b.tar.gz"
    bundle.write_bytes(write_tarball(files))
    active: list[Any] = []
    events: list[str] = []
    rl = BundleReloader(PolicyConfig(str(bundle), pub, False, state_dir=tmp_path / "st",
                                     poll_interval=0),
                        base_dir=tmp_path, activate=active.append,
                        on_event=lambda kind, details: events.append(kind))
    rl.load_initial()
    return rl, bundle, active, events


WRITE = {"statement": {"kind": "write"}}


def test_the_reloader_keeps_the_signed_policy(tmp_path: Path,
                                              key: ec.EllipticCurvePrivateKey) -> None:
    good = signed(key, **{"pgwarden/data.yaml": b"allow_writes: false\nrow_limit: 100\n"})
    rl, bundle, active, events = _reloader(tmp_path, key, good)
    assert active[-1].decide(WRITE).allow is False
    tampered = _swapped(good, "pgwarden/data.yaml", b"allow_writes: no\nrow_limit: 0144\n")
    bundle.write_bytes(write_tarball(tampered))
    result = rl.reload_now("admin")
    decision = active[-1].decide(WRITE)
    assert (decision.allow, decision.row_limit) == (False, 100), result
    for content in (b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}", b'{"x": NaN}'):
        bundle.write_bytes(write_tarball(_swapped(good, "pgwarden/data.json", content)))
        result = rl.reload_now("admin")  # never raises: rejected, and said so
        assert result.status == "rejected" and events[-1] == "bundle_rejected", result
        assert rl.revision == "r1" and active[-1].decide(WRITE).row_limit == 100
