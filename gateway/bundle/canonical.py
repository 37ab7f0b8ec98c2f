"""OPA's file hashing for bundle signatures (``v1/bundle/hash.go``).

Structured files — base name ``.manifest``, ``data.json`` or ``data.yaml`` — are hashed
over a canonical encoding of their parsed value, so whitespace and key order do not
matter; every other file (``.rego``, ``data.yml`` — an OPA quirk — , anything else) is
hashed as raw bytes.

Parsing follows OPA's ``util.Unmarshal``: a UTF-8 BOM is stripped; text that is valid
JSON is parsed as JSON with numbers kept as their original text (Go's ``json.Number``);
anything else is read as YAML and converted to JSON (YAML 1.1 scalars as go-yaml reads
them; numbers then print as Go's ``encoding/json`` does).

Canonical encoding: objects are ``{`` + ``"key":value`` joined by ``,`` with keys in
byte order + ``}``; arrays ``[`` + elements joined by ``,`` + ``]``; strings as Go's JSON
encoder writes them without HTML escaping (``\\u2028``/``\\u2029`` escaped); numbers as
their text; ``true``/``false``/``null``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import re
import warnings
from collections.abc import Callable
from decimal import Decimal
from pathlib import PurePosixPath
from typing import Any

__all__ = [
    "DEFAULT_HASH",
    "HASH_ALGORITHMS",
    "CanonicalError",
    "canonical_json",
    "canonical_value",
    "file_digest",
    "is_structured",
    "not_json_constant",
]

DEFAULT_HASH = "SHA-256"
# OPA's names (case-sensitive, as OPA compares them).
HASH_ALGORITHMS: dict[str, Callable[[], Any]] = {
    "MD5": hashlib.md5,
    "SHA-1": hashlib.sha1,
    "SHA-224": hashlib.sha224,
    "SHA-256": hashlib.sha256,
    "SHA-384": hashlib.sha384,
    "SHA-512": hashlib.sha512,
    "SHA-512-224": lambda: hashlib.new("sha512_224"),
    "SHA-512-256": lambda: hashlib.new("sha512_256"),
}
STRUCTURED_NAMES = frozenset({".manifest", "data.json", "data.yaml"})


class CanonicalError(ValueError):
    """A structured file that neither JSON nor YAML can read."""


def is_structured(name: str) -> bool:
    return PurePosixPath(name).name in STRUCTURED_NAMES


def file_digest(name: str, content: bytes, algorithm: str = DEFAULT_HASH) -> str:
    """Hex digest of one bundle file as OPA computes it. Raises KeyError for an unknown
    algorithm and CanonicalError for an unreadable structured file."""
    h = HASH_ALGORITHMS[algorithm]()
    h.update(canonical_json(content) if is_structured(name) else content)
    return h.hexdigest()


# -- parsing ------------------------------------------------------------------------------


class _Num(str):
    """A JSON number, kept as its source text."""

    __slots__ = ()


def not_json_constant(name: str) -> Any:
    """json's parse_constant for strict JSON: NaN and the infinities are refused."""
    raise ValueError(f"{name} is not JSON")


def _parse(content: bytes) -> Any:
    if content.startswith(b"\xef\xbb\xbf"):
        content = content[3:]
    # Go decodes invalid UTF-8 inside JSON strings as U+FFFD.
    text = content.decode("utf-8", errors="replace")
    try:
        return json.loads(text, parse_int=_Num, parse_float=_Num,
                          parse_constant=not_json_constant)
    except ValueError:
        pass
    return _parse_yaml(text)


def _parse_yaml(text: str) -> Any:
    from ruamel.yaml import YAML
    from ruamel.yaml.constructor import SafeConstructor
    from ruamel.yaml.error import YAMLError
    from ruamel.yaml.events import AliasEvent

    class _Constructor(SafeConstructor):
        pass

    # go-yaml (through sigs.k8s.io/yaml) leaves timestamps as strings.
    _Constructor.add_constructor("tag:yaml.org,2002:timestamp",
                                 SafeConstructor.construct_yaml_str)
    yaml = YAML(typ="safe", pure=True)
    yaml.Constructor = _Constructor
    yaml.version = (1, 1)  # go-yaml v2 reads yes/no/on/off as booleans
    try:
        with warnings.catch_warnings():  # ruamel nags about YAML 1.1 floats like 1e3
            warnings.simplefilter("ignore")
            # An alias repeats what it names: a few hundred bytes of nested aliases
            # expand to gigabytes once walked. Data files have no use for them.
            if any(isinstance(e, AliasEvent) for e in yaml.parse(text)):
                raise CanonicalError("YAML aliases (*name) are not accepted in bundle data")
            value = yaml.load(text)
    except YAMLError as exc:
        raise CanonicalError(f"neither JSON nor YAML: {str(exc).splitlines()[0]}") from None
    return _from_yaml(value)


def _from_yaml(value: Any) -> Any:
    if isinstance(value, dict):
        return {_yaml_key(k): _from_yaml(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_yaml(v) for v in value]
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return _Num(str(value))
    if isinstance(value, float):
        return _Num(go_float(value))
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    raise CanonicalError(f"YAML value of type {type(value).__name__} is not JSON data")


def _yaml_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bool):
        return "true" if key else "false"
    if key is None:
        return "null"
    if isinstance(key, int):
        return str(key)
    if isinstance(key, float):
        return go_float(key)
    raise CanonicalError(f"YAML key of type {type(key).__name__} cannot be a JSON key")


def go_float(f: float) -> str:
    """A float64 as Go's ``encoding/json`` prints it (shortest digits; exponent form
    below 1e-6 or from 1e21, with ``e-7`` rather than ``e-07``)."""
    if math.isnan(f) or math.isinf(f):
        raise CanonicalError(f"{f} is not a JSON number")
    if f == 0:
        return "-0" if math.copysign(1.0, f) < 0 else "0"
    sign, digits, exp = Decimal(repr(f)).as_tuple()
    ds = "".join(map(str, digits)).rstrip("0") or "0"
    # value = 0.d1d2... x 10^point
    point = len(digits) + int(exp)
    neg = "-" if sign else ""
    if 1e-6 <= abs(f) < 1e21:
        if point <= 0:
            return f"{neg}0.{'0' * -point}{ds}"
        if point >= len(ds):
            return f"{neg}{ds}{'0' * (point - len(ds))}"
        return f"{neg}{ds[:point]}.{ds[point:]}"
    e = point - 1
    mant = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
    return f"{neg}{mant}e{'-' if e < 0 else '+'}{abs(e):02d}".replace("e-0", "e-")


# -- encoding -----------------------------------------------------------------------------

_SURROGATE = re.compile("[\ud800-\udfff]")


def _string(s: str) -> str:
    if _SURROGATE.search(s):
        s = _SURROGATE.sub("\ufffd", s)  # Go decodes lone surrogate escapes as U+FFFD
    out = json.dumps(s, ensure_ascii=False)
    return out.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _encode(value: Any, out: list[str]) -> None:
    if isinstance(value, dict):
        out.append("{")
        for i, key in enumerate(sorted(value, key=lambda k: k.encode("utf-8", "surrogatepass"))):
            if i:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _encode(value[key], out)
        out.append("}")
    elif isinstance(value, list):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, out)
        out.append("]")
    elif isinstance(value, _Num):
        out.append(str.__str__(value))
    elif isinstance(value, str):
        out.append(_string(value))
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif value is None:
        out.append("null")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        out.append(go_float(value))
    else:  # pragma: no cover - the parsers produce nothing else
        raise CanonicalError(f"cannot encode {type(value).__name__}")


def canonical_json(content: bytes) -> bytes:
    """The bytes OPA hashes for a structured file (raises CanonicalError)."""
    try:
        value = _parse(content)
        out: list[str] = []
        _encode(value, out)
    except RecursionError:
        raise CanonicalError("nested too deeply") from None
    return "".join(out).encode("utf-8")


def canonical_value(content: bytes) -> Any:
    """A structured file's value as its signature hashed it: what a bundle's data must
    load as, so that no other reading of the same bytes (YAML 1.2's `no` as a string,
    an octal `0144`, a JSON NaN) can stand behind a valid signature."""
    try:
        return json.loads(canonical_json(content))
    except RecursionError:
        raise CanonicalError("nested too deeply") from None
