"""Signed policy bundles: OPA's format, hashing and JWS; build → sign → verify; tampering;
roots; unsafe archives."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from gateway.bundle.archive import read_tarball, write_tarball
from gateway.bundle.build import build_bundle
from gateway.bundle.canonical import canonical_json, file_digest, go_float
from gateway.bundle.errors import ArchiveError, BundleError, VerificationError
from gateway.bundle.loader import load_bundle, load_bundle_bytes
from gateway.bundle.signing import (
    b64url_encode,
    load_public_key,
    sign_bundle_files,
    signatures_json,
)
from gateway.bundle.verify import VerificationConfig, verify_token

REGO = """package pgwarden

import rego.v1

decision := {"allow": input.statement.kind == "read", "reasons": [data.pgwarden.note],
             "mask": {}, "require_approval": false, "approvers": [], "row_limit": null,
             "db_role": null}
"""
REGO_TEST = """package pgwarden_test

import rego.v1

test_reads if data.pgwarden.decision.allow with input.statement as {"kind": "read"}
"""


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    d = tmp_path / "policy"
    (d / "pgwarden").mkdir(parents=True)
    (d / "pgwarden" / "policy.rego").write_text(REGO)
    (d / "pgwarden" / "policy_test.rego").write_text(REGO_TEST)
    (d / "pgwarden" / "data.json").write_text('{"note": "from data.json", "limit": 1.50}')
    (d / "pgwarden" / "tags").mkdir()
    (d / "pgwarden" / "tags" / "data.yaml").write_text("pan: [pan]\ncvv: [cvv]\n")
    (d / "README.md").write_text("not packed")
    (d / ".git").mkdir()
    (d / ".git" / "x.rego").write_text("package hidden")
    (d / ".hidden.rego").write_text("package hidden")
    return d


def verification(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, **kw: object
                 ) -> VerificationConfig:
    return VerificationConfig(key.public_key(), **kw)  # type: ignore[arg-type]


def retar(raw: bytes, **changes: bytes | None) -> bytes:
    """The bundle with entries replaced (bytes), added, or removed (None)."""
    files = read_tarball(raw)
    for name, content in changes.items():
        name = name.replace("__", "/").replace("_DOT_", ".")
        if content is None:
            files.pop(name)
        else:
            files[name] = content
    return write_tarball(files)


def raw_tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, content in entries:
            if content is not None:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
            else:
                tar.addfile(info)
    return buf.getvalue()


def reg(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


# -- build → sign → verify -----------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "RS512", "PS256", "PS384", "ES256", "ES384",
                                 "ES512", "EdDSA"])
def test_build_sign_verify_round_trip(src: Path, rsa_key: rsa.RSAPrivateKey, alg: str
                                      ) -> None:
    key: object
    if alg[:2] in ("RS", "PS"):
        key = rsa_key
    elif alg == "EdDSA":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        curve = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}[alg]
        key = ec.generate_private_key(curve())
    raw = build_bundle(src, revision="v42", signing_key=key, signing_alg=alg)  # type: ignore[arg-type]
    bundle = load_bundle_bytes(raw, "b.tar.gz", verification=verification(key))  # type: ignore[arg-type]
    assert bundle.revision == "v42"
    assert bundle.sha256 == hashlib.sha256(raw).hexdigest()
    assert bundle.signature is not None and bundle.signature.verified
    assert bundle.signature.algorithm == alg and bundle.signature.keyid == "default"
    assert sorted(bundle.signature.files) == [
        ".manifest", "pgwarden/data.json", "pgwarden/policy.rego",
        "pgwarden/policy_test.rego", "pgwarden/tags/data.yaml"]
    assert bundle.source.data["pgwarden"]["tags"] == {"pan": ["pan"], "cvv": ["cvv"]}
    assert bundle.source.archive_sha256 == bundle.sha256
    header = json.loads(__import__("base64").urlsafe_b64decode(
        json.loads(read_tarball(raw)[".signatures.json"])["signatures"][0].split(".")[0]
        + "=="))
    assert header == {"alg": alg, "kid": "default"}  # OPA's header: no typ


def test_build_is_deterministic_and_skips_hidden_and_other_files(src: Path) -> None:
    one = build_bundle(src, revision="r1")
    assert one == build_bundle(src, revision="r1")
    names = list(read_tarball(one))
    assert ".git/x.rego" not in names and ".hidden.rego" not in names
    assert "README.md" not in names and ".signatures.json" not in names
    manifest = json.loads(read_tarball(one)[".manifest"])
    assert manifest == {"revision": "r1", "roots": [""], "rego_version": 1}
    with tarfile.open(fileobj=io.BytesIO(one)) as tar:
        assert {(m.mtime, m.uid, m.gid, m.uname) for m in tar} == {(0, 0, 0, "")}


def test_structured_files_verify_after_reformatting(src: Path, rsa_key: rsa.RSAPrivateKey
                                                    ) -> None:
    """data.json/.manifest are hashed canonically: whitespace and key order don't count,
    but raw files (.rego) do."""
    raw = build_bundle(src, revision="r", signing_key=rsa_key)
    pretty = b'{\n  "limit": 1.50,\n  "note": "from data.json"\n}\n'
    again = retar(raw, pgwarden__data_DOT_json=pretty)
    load_bundle_bytes(again, "b", verification=verification(rsa_key))
    number = retar(raw, pgwarden__data_DOT_json=b'{"limit": 1.5, "note": "from data.json"}')
    with pytest.raises(VerificationError) as e:  # 1.5 is not the signed text 1.50
        load_bundle_bytes(number, "b", verification=verification(rsa_key))
    assert e.value.file == "pgwarden/data.json"


# -- one test per tampering class -------------------------------------------------------------


@pytest.fixture
def signed(src: Path, rsa_key: rsa.RSAPrivateKey) -> bytes:
    return build_bundle(src, revision="r1", signing_key=rsa_key)


def test_tamper_missing_file(signed: bytes, rsa_key: rsa.RSAPrivateKey) -> None:
    bad = retar(signed, pgwarden__policy_test_DOT_rego=None)
    with pytest.raises(VerificationError) as e:
        load_bundle_bytes(bad, "b", verification=verification(rsa_key))
    assert e.value.file == "pgwarden/policy_test.rego"
    assert "missing from the bundle" in e.value.reason


def test_tamper_extra_file(signed: bytes, rsa_key: rsa.RSAPrivateKey) -> None:
    bad = retar(signed, pgwarden__backdoor_DOT_rego=b"package pgwarden\nx := 1\n")
    with pytest.raises(VerificationError) as e:
        load_bundle_bytes(bad, "b", verification=verification(rsa_key))
    assert e.value.file == "pgwarden/backdoor.rego"
    assert "not listed in the bundle signature" in e.value.reason


def test_tamper_hash_mismatch(signed: bytes, rsa_key: rsa.RSAPrivateKey) -> None:
    bad = retar(signed, pgwarden__policy_DOT_rego=REGO.replace('== "read"', '!= ""').encode())
    with pytest.raises(VerificationError) as e:
        load_bundle_bytes(bad, "b", verification=verification(rsa_key))
    assert e.value.file == "pgwarden/policy.rego"
    assert "digest mismatch" in e.value.reason


def test_tamper_wrong_key(signed: bytes, other_rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(VerificationError) as e:
        load_bundle_bytes(signed, "b", verification=verification(other_rsa_key))
    assert e.value.file == ".signatures.json"
    assert "does not verify with the configured key" in e.value.reason


def test_tamper_wrong_scope(src: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    raw = build_bundle(src, revision="r", signing_key=rsa_key, claims={"scope": "staging"})
    load_bundle_bytes(raw, "b", verification=verification(rsa_key, scope="staging"))
    for expected in ("prod", ""):
        with pytest.raises(VerificationError) as e:
            load_bundle_bytes(raw, "b", verification=verification(rsa_key, scope=expected))
        assert "scope mismatch" in e.value.reason and "'staging'" in e.value.reason


def test_tamper_missing_signature_with_a_key_configured(signed: bytes,
                                                        rsa_key: rsa.RSAPrivateKey) -> None:
    bad = retar(signed, _DOT_signatures_DOT_json=None)
    with pytest.raises(VerificationError) as e:
        load_bundle_bytes(bad, "b", verification=verification(rsa_key))
    assert e.value.file == ".signatures.json" and "must be signed" in e.value.reason
    # Even allow_unsigned does not make a signed bundle with a stripped signature pass
    # when no unsigned bundle is wanted; with it, the unsigned bundle is just unsigned.
    ok = load_bundle_bytes(bad, "b", verification=verification(rsa_key), allow_unsigned=True)
    assert ok.signature is None


def test_tamper_signature_present_but_no_key(signed: bytes) -> None:
    for allow in (False, True):
        with pytest.raises(VerificationError) as e:
            load_bundle_bytes(signed, "b", verification=None, allow_unsigned=allow)
        assert "no verification key is configured" in e.value.reason


def test_tamper_unexpected_keyid(src: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    raw = build_bundle(src, revision="r", signing_key=rsa_key, keyid="staging-signer")
    with pytest.raises(VerificationError) as e:
        load_bundle_bytes(raw, "b", verification=verification(rsa_key))
    assert "'staging-signer'" in e.value.reason and "'default'" in e.value.reason
    ok = load_bundle_bytes(raw, "b", verification=verification(rsa_key,
                                                                keyid="staging-signer"))
    assert ok.signature is not None and ok.signature.keyid == "staging-signer"


def test_tamper_edited_token_payload(signed: bytes, rsa_key: rsa.RSAPrivateKey) -> None:
    """Swapping in a payload that lists a forged hash breaks the JWS signature."""
    token = json.loads(read_tarball(signed)[".signatures.json"])["signatures"][0]
    h, p, s = token.split(".")
    payload = json.loads(__import__("base64").urlsafe_b64decode(p + "=="))
    payload["files"][0]["hash"] = "00" * 32
    forged = f"{h}.{b64url_encode(json.dumps(payload).encode())}.{s}"
    bad = retar(signed, _DOT_signatures_DOT_json=signatures_json(forged))
    with pytest.raises(VerificationError, match="does not verify"):
        load_bundle_bytes(bad, "b", verification=verification(rsa_key))


def test_hmac_and_none_algorithms_are_refused(signed: bytes, rsa_key: rsa.RSAPrivateKey
                                              ) -> None:
    files = read_tarball(signed)
    for alg in ("HS256", "none"):
        header = b64url_encode(json.dumps({"alg": alg, "kid": "default"}).encode())
        token = f"{header}.{json.loads(files['.signatures.json'])['signatures'][0].split('.')[1]}."
        bad = retar(signed, _DOT_signatures_DOT_json=signatures_json(token))
        with pytest.raises(VerificationError, match="refused"):
            load_bundle_bytes(bad, "b", verification=verification(rsa_key))


def test_unsigned_bundles_need_allow_unsigned(src: Path) -> None:
    raw = build_bundle(src, revision="dev")
    with pytest.raises(BundleError, match="not signed"):
        load_bundle_bytes(raw, "b")
    assert load_bundle_bytes(raw, "b", allow_unsigned=True).revision == "dev"
    with pytest.raises(BundleError, match="not signed"):
        load_bundle(src)
    assert load_bundle(src, allow_unsigned=True).source.data["pgwarden"]["note"]


def test_a_signed_directory_is_verified_file_by_file(tmp_path: Path, signed: bytes,
                                                     rsa_key: rsa.RSAPrivateKey) -> None:
    d = tmp_path / "unpacked"
    for name, content in read_tarball(signed).items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(content)
    ok = load_bundle(d, verification=verification(rsa_key))
    assert ok.revision == "r1" and ok.signature is not None
    (d / "notes.txt").write_text("every file of a signed directory counts")
    with pytest.raises(VerificationError) as e:
        load_bundle(d, verification=verification(rsa_key))
    assert e.value.file == "notes.txt"


# -- exactly as OPA specifies, built by hand --------------------------------------------------


def _opa_canonical(value: object) -> bytes:
    # OPA's structured-file encoding for plain JSON without floats: sorted keys, no space.
    return json.dumps(value, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


@pytest.mark.parametrize("family", ["RS256", "ES256"])
def test_a_bundle_signed_by_hand_as_opa_specifies_verifies(
        family: str, rsa_key: rsa.RSAPrivateKey) -> None:
    data = {"pgwarden": {"note": "hand made", "tags": ["a", "b"]}}
    manifest = {"revision": "hand-1", "roots": [""], "rego_version": 1}
    # What `opa build` writes: leading slashes, pretty data.json, manifest.
    entries = {
        "/data.json": json.dumps(data, indent=4).encode(),
        "/pgwarden/policy.rego": REGO.encode(),
        "/.manifest": json.dumps(manifest).encode(),
    }
    files = [
        {"name": "pgwarden/policy.rego", "hash": hashlib.sha256(REGO.encode()).hexdigest(),
         "algorithm": "SHA-256"},
        {"name": "data.json", "hash": hashlib.sha256(_opa_canonical(data)).hexdigest(),
         "algorithm": "SHA-256"},
        {"name": ".manifest", "hash": hashlib.sha512(_opa_canonical(manifest)).hexdigest(),
         "algorithm": "SHA-512"},
    ]
    header = b64url_encode(json.dumps({"alg": family, "kid": "default"}).encode())
    payload = b64url_encode(json.dumps({"files": files, "keyid": "default"}).encode())
    signing_input = f"{header}.{payload}".encode()
    if family == "RS256":
        key: object = rsa_key
        sig = rsa_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))  # type: ignore[attr-defined]
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    token = f"{header}.{payload}.{b64url_encode(sig)}"
    entries["/.signatures.json"] = json.dumps({"signatures": [token]}).encode()
    raw = raw_tar([(reg(n), c) for n, c in entries.items()])
    pub_pem = key.public_key().public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    bundle = load_bundle_bytes(raw, "hand.tar.gz",
                               verification=VerificationConfig(load_public_key(pub_pem)))
    assert bundle.revision == "hand-1"
    assert bundle.source.data == data
    assert bundle.signature is not None and bundle.signature.verified


# OPA's own test vectors (open-policy-agent/opa v1/bundle/sign_test.go: expected digests
# of structured files; verify_test.go: an RS256 token signed by OPA's test tooling).
OPA_DIGESTS = [
    (".manifest", b'{"revision": "quickbrownfaux"}', "MD5", "a005c38a509dc2d5a7407b9494efb2ad"),
    ("a/b/c/data.json", b"[1,2,3]", "SHA-512",
     "60f7b5dc86ded48785436192a08dbfd04894d7f1b417c4f8d3714679a7f78cb3"
     "c833f16a8559a1cf1f32968747dc1d95ef34826263dacf125ded8f5c374be4c0"),
    ("a/b/d/data.json", b"true", "MD5", "b326b5062b2f0e69046810717534cb09"),
    ("a/b/y/data.yaml", b"foo: 1", "SHA-512",
     "20f27a640a233e6524fe7d138898583cd43475724806feb26be7f214e1d10b29"
     "edf6a0d3cb08f82107a45686b61b8fdabab6406cf4e70efe134f42238dbd70ab"),
    ("data.json", b'{"x": {"y": true}, "a": {"b": {"z": true}}}', "MD5",
     "36669864a622563256817033b1fc53db"),
]


@pytest.mark.parametrize(("name", "content", "alg", "digest"), OPA_DIGESTS)
def test_opa_digest_vectors(name: str, content: bytes, alg: str, digest: str) -> None:
    assert file_digest(name, content, alg) == digest


OPA_RS256_TOKEN = (
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImZvbyJ9.eyJmaWxlcyI6W3sibmFtZSI6ImRiL3Vh"
    "bTIvZW50aXRsZW1lbnRzL2RhdGEuanNvbiIsImhhc2giOiJjMjEzMTU0NGM3MTZhMjVhNWUzMWY1MDQzMDBm"
    "NTI0MGU4MjM1Y2FkYjlhNTdmMGJkMWI2ZjRiZDc0YjI2NjEyIiwiYWxnb3JpdGhtIjoic2hhMjU2In0seyJu"
    "YW1lIjoiZGIvdWFtMi9wb2xpY3kvb3BhLXBvbGljeS5yZWdvIiwiaGFzaCI6IjQyY2ZlNjc2OGI1N2JiNWY3"
    "NTAzYzE2NWMyOGRkMDdhYzViODEzNTU0ZWJjODUwZjJjYzM1ODQzZTcxMzdiMWQifV0sImlhdCI6MTU5MjI1"
    "MTQwNiwiaXNzIjoiSldUU2VydmljZSIsInNjb3BlIjoid3JpdGUifQ.UZcX_Qj29o213nwZ5mysiyNcgAp1A"
    "OqCkDLkj1KGZ7Cw3l17TbkF8t3FJd654sf762NGcABA0WQ2zxq-labXl_d5TKQmq23lurO3qLHI1cKQPyoxP"
    "bddGo78sJpMwWsiMyEYcyyKC9FpNUpa8cT81GPo4q9Zui8TAD0wtHh2YxBL7E8QYLJxcLMJTJxVBgrQGLXFT7"
    "vYRc6hJz9Vu-i0SWuLBGxOCmYoHr4DWFfy0IhAbhiUFyLRpukfBPjCJNYY5LgaZdN6LaYivtIEUms5jUuXubB"
    "imLJm7KOT5-bgJMXTcUsbrbl2Ma7PwG5IOKjjgyEvH8KVfGFZSzNrpuxKmA")
OPA_RS256_PUBLIC = b"""-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA9KaakMv1XKKDaSch3PFR
3a27oaHp1GNTTNqvb1ZaHZXp+wuhYDwc/MTE67x9GCifvQBWzEGorgTq7aisiOyl
vKifwz6/wQ+62WHKG/sqKn2Xikp3P63aBIPlZcHbkyyRmL62yeyuzYoGvLEYel+m
z5SiKGBwviSY0Th2L4e5sGJuk2HOut6emxDi+E2Fuuj5zokFJvIT6Urlq8f3h6+l
GeR6HUOXqoYVf7ff126GP7dticTVBgibxkkuJFmpvQSW6xmxruT4k6iwjzbZHY7P
ypZ/TdlnuGC1cOpAVyU7k32IJ9CRbt3nwEf5U54LRXLLQjFixWZHwKdDiMTF4ws0
+wIDAQAB
-----END PUBLIC KEY-----
"""


def test_a_token_signed_by_opa_verifies(other_rsa_key: rsa.RSAPrivateKey) -> None:
    key = load_public_key(OPA_RS256_PUBLIC)
    info = verify_token(OPA_RS256_TOKEN, VerificationConfig(key, keyid="foo", scope="write"))
    assert info.verified and info.keyid == "foo" and info.issuer == "JWTService"
    assert sorted(info.files) == ["db/uam2/entitlements/data.json",
                                  "db/uam2/policy/opa-policy.rego"]
    with pytest.raises(VerificationError, match="scope mismatch"):
        verify_token(OPA_RS256_TOKEN, VerificationConfig(key, keyid="foo"))
    with pytest.raises(VerificationError, match="does not verify"):
        verify_token(OPA_RS256_TOKEN, VerificationConfig(other_rsa_key.public_key(),
                                                         keyid="foo", scope="write"))


def test_canonical_encoding_details() -> None:
    assert canonical_json(b'\xef\xbb\xbf{"b":[1.0,2e3],"a":"<&>\xe2\x80\xa8"}') == \
        b'{"a":"<&>\\u2028","b":[1.0,2e3]}'
    assert canonical_json(b"b: 1.0\na: [yes, 2020-01-02, 1e-7]\n") == \
        b'{"a":[true,"2020-01-02",1e-7],"b":1}'
    assert canonical_json(b'{"\xc3\xa9":1,"z":2,"A":3}') == '{"A":3,"z":2,"é":1}'.encode()
    assert [go_float(f) for f in (0.1, 1e21, 123456789.0, 1.5e-7, -2.5, 1e20)] == \
        ["0.1", "1e+21", "123456789", "1.5e-7", "-2.5", "100000000000000000000"]


# -- roots ------------------------------------------------------------------------------------


def test_roots_are_enforced(src: Path) -> None:
    ok = build_bundle(src, revision="r", roots=["pgwarden", "pgwarden_test"])
    assert load_bundle_bytes(ok, "b", allow_unsigned=True).source.manifest["roots"] == [
        "pgwarden", "pgwarden_test"]
    with pytest.raises(BundleError, match="outside the manifest roots") as e:
        build_bundle(src, revision="r", roots=["pgwarden"])
    assert e.value.file is not None and e.value.file.endswith("policy_test.rego:1")
    files = read_tarball(ok)
    files["other/data.json"] = b'{"x": 1}'
    with pytest.raises(BundleError, match=r"data\.other is outside the manifest roots"):
        load_bundle_bytes(write_tarball(files), "b", allow_unsigned=True)
    files.pop("other/data.json")
    files[".manifest"] = b'{"revision": "r", "roots": ["pgwarden", "pgwarden/tags"]}'
    with pytest.raises(BundleError, match="roots overlap"):
        load_bundle_bytes(write_tarball(files), "b", allow_unsigned=True)


# -- unsafe archives --------------------------------------------------------------------------


def test_path_traversal_is_refused() -> None:
    raw = raw_tar([(reg("../escape.rego"), b"package x")])
    with pytest.raises(ArchiveError, match=r"unsafe entry name '\.\./escape\.rego'"):
        read_tarball(raw)
    raw = raw_tar([(reg("a/../../escape.rego"), b"package x")])
    with pytest.raises(ArchiveError, match="unsafe entry name"):
        read_tarball(raw)


def test_absolute_names_are_made_relative() -> None:
    raw = raw_tar([(reg("/etc/pgwarden/data.json"), b"{}"), (reg("./x.rego"), b"package x")])
    assert list(read_tarball(raw)) == ["etc/pgwarden/data.json", "x.rego"]


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
                                  tarfile.FIFOTYPE])
def test_links_and_devices_are_refused(kind: bytes) -> None:
    info = reg("policy.rego")
    info.type = kind
    info.linkname = "/etc/passwd"
    raw = raw_tar([(info, None)])
    with pytest.raises(ArchiveError, match="regular files only") as e:
        read_tarball(raw)
    assert e.value.file == "policy.rego"


def test_gzip_bombs_stop_at_the_caps() -> None:
    raw = raw_tar([(reg("data.json"), b"0" * 2_000_000)])
    assert len(raw) < 10_000  # it compresses ~1000:1
    with pytest.raises(ArchiveError, match="larger than the 1000000-byte limit"):
        read_tarball(raw, max_file_bytes=1_000_000)
    many = raw_tar([(reg(f"{i}/data.json"), b"0" * 600_000) for i in range(4)])
    with pytest.raises(ArchiveError, match="more than 2000000 bytes once decompressed"):
        read_tarball(many, max_total_bytes=2_000_000)


def test_not_a_tarball_and_duplicates() -> None:
    with pytest.raises(ArchiveError, match="not a gzip file"):
        read_tarball(b"PK\x03\x04zip")
    with pytest.raises(ArchiveError, match="not a readable"):
        read_tarball(b"\x1f\x8b\x08\x00garbage")
    raw = raw_tar([(reg("x.rego"), b"package a"), (reg("/x.rego"), b"package b")])
    with pytest.raises(ArchiveError, match="appears twice"):
        read_tarball(raw)


def test_a_symlink_in_a_source_directory_is_refused(src: Path, tmp_path: Path) -> None:
    (tmp_path / "outside.rego").write_text("package pgwarden\n")
    (src / "pgwarden" / "link.rego").symlink_to(tmp_path / "outside.rego")
    with pytest.raises(ArchiveError, match="symbolic link") as e:
        build_bundle(src)
    assert e.value.file == "pgwarden/link.rego"


def test_sign_refuses_mismatched_algorithms(src: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    from gateway.bundle.build import bundle_files
    from gateway.bundle.signing import KeyFileError

    files = bundle_files(src)
    with pytest.raises(KeyFileError, match="does not match the key"):
        sign_bundle_files(files, rsa_key, "ES256")
    with pytest.raises(KeyFileError, match="refused"):
        sign_bundle_files(files, rsa_key, "HS256")
