"""Policy sources: a directory (or file, or bundle tarball) of Rego modules and data.

Layout follows OPA bundles (see shared/reference/opa-bundles.md):

* every ``*.rego`` file, recursively, is a module;
* a ``data.json`` (or ``data.yaml``/``data.yml``) is placed in ``data`` at its directory
  path: ``a/b/data.json`` becomes ``data.a.b``; a top-level one merges at the root and
  must be an object; two files that set the same leaf are an error;
* an optional top-level ``.manifest`` (JSON) gives ``revision``, ``roots`` and
  ``metadata``; ``metadata.entrypoint`` (``pgwarden/decision`` or
  ``data.pgwarden.decision``) overrides the default entrypoint;
* hidden files and directories (``.git``, ``.signatures.json``) and every other file are
  ignored.

``PolicySource.hash`` is a content hash, independent of how the files were packed:
``sha256`` over, for each contributing file in byte order of its relative name,
``name || 0x00 || decimal byte length || 0x00 || bytes``. ``revision`` is the manifest's
``revision`` or ``dev-<first 12 hex digits of hash>``.

Signature verification is not done here: the bundle layer verifies first, then hands the
verified bytes to :meth:`PolicySource.from_files`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from gateway.policy.errors import PolicyCompileError, PolicyLoadError
from gateway.policy.scan import ModuleInfo, scan_module

__all__ = ["DATA_FILE_NAMES", "MAX_FILE_BYTES", "PolicySource", "normalize_entrypoint"]

DATA_FILE_NAMES = ("data.json", "data.yaml", "data.yml")
MANIFEST_NAME = ".manifest"
MAX_FILE_BYTES = 64 * 1024 * 1024  # per file; a bundle is policy, not a data lake
DEFAULT_ENTRYPOINT = "pgwarden/decision"
TEST_SUFFIX = "_test.rego"


def normalize_entrypoint(entrypoint: str) -> str:
    """``data.pgwarden.decision`` / ``pgwarden.decision`` / ``pgwarden/decision`` → the
    slash form regopy wants (``pgwarden/decision``)."""
    ep = entrypoint.strip()
    if ep.startswith("data."):
        ep = ep[len("data.") :]
    ep = ep.strip("/").replace(".", "/")
    parts = [p for p in ep.split("/") if p]
    if not parts or any(not _is_ident(p) for p in parts):
        raise ValueError(f"invalid entrypoint {entrypoint!r}: expected e.g. data.pgwarden.decision")
    return "/".join(parts)


def _is_ident(s: str) -> bool:
    return bool(s) and (s[0].isalpha() or s[0] == "_") and all(c.isalnum() or c == "_" for c in s)


def _kind(name: str) -> str | None:
    base = PurePosixPath(name).name
    if name == MANIFEST_NAME:
        return "manifest"
    if any(part.startswith(".") for part in PurePosixPath(name).parts):
        return None
    if base.endswith(".rego"):
        return "rego"
    if base in DATA_FILE_NAMES:
        return "data"
    return None


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str  # the name hashed (relative to the source root)
    display: str  # the name shown in messages and given to regopy
    rel: str  # the path that decides the file's kind and its place in data
    content: bytes


@dataclass(frozen=True)
class PolicySource:
    """Rego modules + data, with a content hash and a revision. Build with :meth:`load`."""

    origin: str  # where it came from, for messages (a directory, file or tarball path)
    modules: Mapping[str, str]  # display path -> Rego text
    data: Mapping[str, Any]
    manifest: Mapping[str, Any]
    hash: str
    revision: str
    files: Mapping[str, bytes] = field(repr=False)  # relative name -> bytes (hashed)
    archive_sha256: str | None = None  # sha256 of the tarball, when loaded from one
    _infos: dict[str, ModuleInfo] = field(default_factory=dict, repr=False, compare=False)

    # -- constructors -------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PolicySource:
        """Load a directory (recursively), a single ``.rego``/data file or a ``.tar.gz``."""
        p = Path(path)
        if not p.exists():
            raise PolicyLoadError(str(p), "no such file or directory")
        if p.is_dir():
            return cls.from_files(_read_tree(p), origin=str(p))
        name = p.name
        if name.endswith((".tar.gz", ".tgz")):
            raw = _read_file(p)
            files = _read_tarball(raw, str(p))
            return cls.from_files(
                files, origin=str(p), archive_sha256=hashlib.sha256(raw).hexdigest()
            )
        if name.endswith(".rego") or name in DATA_FILE_NAMES:
            return cls.from_files({name: _read_file(p)}, origin=str(p.parent))
        raise PolicyLoadError(
            str(p), "not a policy: expected a directory, a .rego or data.json file, or a .tar.gz"
        )

    @classmethod
    def from_paths(cls, paths: Sequence[str | os.PathLike[str]]) -> PolicySource:
        """Load several paths (like ``opa test a/ b/ c.rego``) into one source.

        Each path is laid out on its own (data by directory relative to that path); the
        results are merged (data conflicts are errors). Manifests apply only when a
        single path is given.
        """
        if not paths:
            raise PolicyLoadError(None, "no policy paths given")
        if len(paths) == 1:
            return cls.load(paths[0])
        entries: list[_Entry] = []
        seen: set[str] = set()
        for raw_path in paths:
            src = cls.load(raw_path)
            for name, content in src.files.items():
                display = _join(src.origin, name)
                if display in seen or name == MANIFEST_NAME:
                    continue
                seen.add(display)
                entries.append(_Entry(display, display, name, content))
        return cls._build(entries, origin=", ".join(str(p) for p in paths))

    @classmethod
    def from_files(
        cls,
        files: Mapping[str, bytes],
        origin: str = "<memory>",
        *,
        archive_sha256: str | None = None,
    ) -> PolicySource:
        """Build from ``{relative name: bytes}`` (e.g. the verified entries of a bundle)."""
        entries: list[_Entry] = []
        for name, content in files.items():
            rel = _clean_name(name, origin)
            if _kind(rel) is None:
                continue
            if len(content) > MAX_FILE_BYTES:
                raise PolicyLoadError(
                    _join(origin, rel), f"file larger than {MAX_FILE_BYTES} bytes"
                )
            entries.append(_Entry(rel, _join(origin, rel), rel, content))
        return cls._build(entries, origin=origin, archive_sha256=archive_sha256)

    @classmethod
    def _build(
        cls, entries: list[_Entry], origin: str, *, archive_sha256: str | None = None
    ) -> PolicySource:
        modules: dict[str, str] = {}
        data: dict[str, Any] = {}
        owners: dict[tuple[str, ...], str] = {}
        manifest: dict[str, Any] = {}
        for entry in entries:  # (names are sorted, and bundle files signed, as UTF-8)
            try:
                entry.name.encode("utf-8")
            except UnicodeEncodeError:
                shown = entry.name.encode("utf-8", "backslashreplace").decode("ascii")
                raise PolicyLoadError(origin, f"file name {shown!r} is not UTF-8") from None
        entries = sorted(entries, key=lambda e: e.name.encode("utf-8"))
        for entry in entries:
            kind = _kind(entry.rel)
            if kind == "manifest":
                manifest = _parse_manifest(entry.content, entry.display)
            elif kind == "rego":
                try:
                    modules[entry.display] = entry.content.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise PolicyLoadError(entry.display, f"not UTF-8 text ({exc.reason})") from None
            elif kind == "data":
                rel = PurePosixPath(entry.rel)
                value = _parse_data(entry.content, entry.display, rel.name)
                path = tuple(rel.parent.parts)
                if not path and not isinstance(value, dict):
                    raise PolicyLoadError(
                        entry.display, "a top-level data file must hold an object"
                    )
                for part in reversed(path):
                    value = {part: value}
                _deep_merge(data, value, (), entry.display, owners)
        if not modules:
            raise PolicyLoadError(origin, "no .rego files found")
        files = {e.name: e.content for e in entries}
        digest = _content_hash(files)
        revision = manifest.get("revision") or f"dev-{digest[:12]}"
        src = cls(
            origin=origin,
            modules=modules,
            data=data,
            manifest=manifest,
            hash=digest,
            revision=revision,
            files=files,
            archive_sha256=archive_sha256,
        )
        src._check_roots()
        return src

    # -- derived information ------------------------------------------------------------

    @property
    def entrypoint(self) -> str | None:
        """The entrypoint named by the manifest (``metadata.entrypoint``), if any."""
        meta = self.manifest.get("metadata")
        ep = meta.get("entrypoint") if isinstance(meta, Mapping) else None
        return ep if isinstance(ep, str) and ep else None

    @property
    def policy_modules(self) -> dict[str, str]:
        """The modules a decision needs: every module except ``*_test.rego`` files.

        (Test modules are for ``policy test``; compiling them costs rego-cpp hundreds of
        MB when they use ``with``, and their builtins must not affect caching.)
        """
        return {k: v for k, v in self.modules.items() if not k.endswith(TEST_SUFFIX)}

    def info(self, module: str) -> ModuleInfo:
        """Scanned structure of one module (package, rule heads, calls...), cached."""
        if module not in self._infos:
            self._infos[module] = scan_module(self.modules[module])
        return self._infos[module]

    def infos(self) -> Iterable[tuple[str, ModuleInfo]]:
        for name in self.modules:
            yield name, self.info(name)

    def defines(self, entrypoint: str, *, include_tests: bool = False) -> bool:
        """Whether the data or a module (tests excluded by default) defines
        ``entrypoint`` (slash or dotted form)."""
        parts = normalize_entrypoint(entrypoint).split("/")
        node: Any = self.data
        for part in parts:
            if not isinstance(node, Mapping) or part not in node:
                break
            node = node[part]
        else:
            return True
        for name, info in self.infos():
            if info.package is None or (name.endswith(TEST_SUFFIX) and not include_tests):
                continue
            pkg = info.package.split(".")
            for rule in info.rules:
                full = pkg + rule.ref.split(".")
                n = min(len(full), len(parts))
                if full[:n] == parts[:n] and not rule.is_function:
                    return True
        return False

    def check_rules_vs_data(self, *, include_tests: bool = False) -> None:
        """Raise PolicyCompileError when a rule and a data document share a path.

        OPA rejects this; regopy accepts it and answers inconsistently (the rule inside
        its package, the data through ``data.<path>``).
        """
        for name, info in self.infos():
            if info.package is None or (name.endswith(TEST_SUFFIX) and not include_tests):
                continue
            pkg = info.package.split(".")
            for rule in info.rules:
                path = pkg + rule.ref.split(".")
                node: Any = self.data
                for i, part in enumerate(path):
                    if not isinstance(node, Mapping):
                        where = ".".join(path[:i])
                        break
                    if part not in node:
                        where = ""
                        break
                    node = node[part]
                else:
                    where = ".".join(path)
                if where:
                    raise PolicyCompileError(
                        name,
                        f"rule data.{'.'.join(path)} conflicts with data.{where} from a data file",
                        rule.line,
                        rule.col,
                    )

    def _check_roots(self) -> None:
        roots = self.manifest.get("roots")
        if roots is None:
            return
        root_parts = [tuple(p for p in r.split("/") if p) for r in roots]
        if any(r == () for r in root_parts):
            return  # "" covers everything

        def under(path: tuple[str, ...]) -> bool:
            return any(path[: len(r)] == r for r in root_parts)

        def prefix_of_root(path: tuple[str, ...]) -> bool:
            return any(r[: len(path)] == path for r in root_parts)

        for name, info in self.infos():
            if info.package is None:
                continue
            pkg = tuple(info.package.split("."))
            if not under(pkg):
                raise PolicyLoadError(
                    name,
                    f"package {info.package} is outside the manifest roots {list(roots)}",
                    info.package_line,
                )

        def walk(node: Any, path: tuple[str, ...]) -> None:
            if path and under(path):
                return
            if isinstance(node, Mapping) and prefix_of_root(path):
                for key, child in node.items():
                    walk(child, (*path, key))
                return
            raise PolicyLoadError(
                MANIFEST_NAME,
                f"data.{'.'.join(path)} is outside the manifest roots {list(roots)}",
            )

        walk(self.data, ())


# -- helpers ----------------------------------------------------------------------------


def _join(origin: str, name: str) -> str:
    if origin.startswith("<") or origin in ("", "."):
        return name
    return f"{origin.rstrip('/')}/{name}"


def _clean_name(name: str, origin: str) -> str:
    rel = name.replace("\\", "/").lstrip("/")
    parts = PurePosixPath(rel).parts
    if not parts or any(p in ("..", "") for p in parts):
        raise PolicyLoadError(origin, f"unsafe file name {name!r} (empty or '..')")
    return "/".join(parts)


def _read_file(p: Path) -> bytes:
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise PolicyLoadError(str(p), f"file larger than {MAX_FILE_BYTES} bytes")
        return p.read_bytes()
    except OSError as exc:
        raise PolicyLoadError(str(p), f"cannot read: {exc.strerror or exc}") from None


def _read_tree(root: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(root)
        for fname in sorted(filenames):
            rel = (rel_dir / fname).as_posix()
            if rel.startswith("./"):
                rel = rel[2:]
            if _kind(rel) is None:
                continue
            files[rel] = _read_file(Path(dirpath) / fname)
    return files


def _read_tarball(raw: bytes, display: str) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:*") as tar:
            for member in tar:
                if member.isdir():
                    continue
                if not member.isfile():
                    raise PolicyLoadError(
                        display, f"{member.name}: links and devices are not allowed"
                    )
                if member.size > MAX_FILE_BYTES:
                    raise PolicyLoadError(
                        display, f"{member.name}: larger than {MAX_FILE_BYTES} bytes"
                    )
                name = _clean_name(member.name, display)
                extracted = tar.extractfile(member)
                if extracted is None:  # pragma: no cover - isfile() above
                    continue
                files[name] = extracted.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise PolicyLoadError(display, f"not a readable .tar.gz: {exc}") from None
    return files


def _parse_manifest(content: bytes, display: str) -> dict[str, Any]:
    manifest = _as_signed(content, display, strict_json=True)
    if not isinstance(manifest, dict):
        raise PolicyLoadError(display, "the manifest must be a JSON object")
    revision = manifest.get("revision")
    if revision is not None and not isinstance(revision, str):
        raise PolicyLoadError(display, "manifest revision must be a string")
    roots = manifest.get("roots")
    if roots is not None and (
        not isinstance(roots, list) or not all(isinstance(r, str) for r in roots)
    ):
        raise PolicyLoadError(display, "manifest roots must be a list of strings")
    if roots:
        norm = [tuple(p for p in r.split("/") if p) for r in roots]
        for i, a in enumerate(norm):
            for b in norm[i + 1 :]:
                if a[: len(b)] == b or b[: len(a)] == a:
                    raise PolicyLoadError(
                        display, f"manifest roots overlap: {'/'.join(a)!r} and {'/'.join(b)!r}"
                    )
    meta = manifest.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise PolicyLoadError(display, "manifest metadata must be an object")
    if isinstance(meta, dict) and "entrypoint" in meta:
        ep = meta["entrypoint"]
        try:
            if not isinstance(ep, str):
                raise ValueError("not a string")
            normalize_entrypoint(ep)
        except ValueError as exc:
            raise PolicyLoadError(display, f"metadata.entrypoint: {exc}") from None
    return manifest


def _parse_data(content: bytes, display: str, base: str) -> Any:
    """A data file's value (data.json must be strict JSON): see _as_signed."""
    return _as_signed(content, display, strict_json=base == "data.json")


def _as_signed(content: bytes, display: str, *, strict_json: bool) -> Any:
    """A structured file's value: the one its bundle signature hashes (bundle.canonical),
    read as OPA reads it (JSON, else YAML 1.1 as go-yaml); `strict_json`: it must be
    JSON, and an error says where."""
    from gateway.bundle.canonical import CanonicalError, canonical_value, not_json_constant

    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PolicyLoadError(display, f"not UTF-8 text ({exc.reason})") from None
    if strict_json:
        try:
            json.loads(text, parse_constant=not_json_constant)
        except json.JSONDecodeError as exc:
            raise PolicyLoadError(
                display, f"invalid JSON: {exc.msg}", exc.lineno, exc.colno
            ) from None
        except (ValueError, RecursionError) as exc:
            raise PolicyLoadError(display, f"invalid JSON: {exc}") from None
    try:
        return canonical_value(content)
    except CanonicalError as exc:
        raise PolicyLoadError(display, f"invalid {'JSON' if strict_json else 'YAML'}: "
                              f"{exc}") from None


def _deep_merge(
    dst: dict[str, Any],
    src: Mapping[str, Any],
    prefix: tuple[str, ...],
    display: str,
    owners: dict[tuple[str, ...], str],
) -> None:
    """Merge ``src`` into ``dst``: objects merge key by key; any other overlap conflicts."""
    for key, value in src.items():
        here = (*prefix, key)
        if key not in dst:
            dst[key] = value
            owners[here] = display
        elif isinstance(dst[key], dict) and isinstance(value, dict):
            _deep_merge(dst[key], value, here, display, owners)
        else:
            other = next(
                (owners[here[:n]] for n in range(len(here), 0, -1) if here[:n] in owners),
                "another data file",
            )
            raise PolicyLoadError(display, f"data.{'.'.join(here)} is also set by {other}")


def _content_hash(files: Mapping[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(files, key=lambda s: s.encode("utf-8")):
        content = files[name]
        h.update(name.encode("utf-8"))
        h.update(b"\x00")
        h.update(str(len(content)).encode("ascii"))
        h.update(b"\x00")
        h.update(content)
    return h.hexdigest()
