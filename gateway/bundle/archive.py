"""Bundle tarballs: safe reading and deterministic writing.

Reading (:func:`read_tarball`) refuses anything that could escape or exhaust: entries
that are not regular files or directories (symbolic/hard links, devices, FIFOs), names
with ``..`` or empty components, two entries with the same name, a file larger than
``max_file_bytes``, more than ``max_total_bytes`` of content or ``MAX_ENTRIES`` entries
(a gzip bomb stops at the first cap it crosses). Leading ``/`` (``opa build`` writes
``/data.json``) and ``./`` are stripped. Entries keep their archive order.

Writing (:func:`write_tarball`) is deterministic: the same files give the same bytes
(entries sorted by name, mtime 0, uid/gid 0, no user names, mode 0644, gzip header
without name or time), so a bundle's sha256 depends only on its content.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from gateway.bundle.errors import ArchiveError

__all__ = [
    "MANIFEST",
    "MAX_ENTRIES",
    "MAX_FILE_BYTES",
    "MAX_TOTAL_BYTES",
    "SIGNATURES",
    "clean_name",
    "collect_policy_files",
    "read_directory",
    "read_tarball",
    "write_tarball",
]

MANIFEST = ".manifest"
SIGNATURES = ".signatures.json"
MAX_FILE_BYTES = 64 * 1024 * 1024  # one file (OPA allows 1 GB; a policy bundle is small)
MAX_TOTAL_BYTES = 256 * 1024 * 1024  # all files together, decompressed
MAX_ENTRIES = 10_000
POLICY_DATA_NAMES = ("data.json", "data.yaml", "data.yml")


def _utf8_name(name: str, where: str | None = None) -> None:
    """Refuse a name that is not UTF-8 (read with surrogate escapes): bundle names are
    hashed, signed and sorted as UTF-8, and such a name would be none of those."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        shown = name.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
        raise ArchiveError(where or shown, f"entry name {shown!r} is not UTF-8") from None


def clean_name(name: str, where: str | None = None) -> str:
    """A bundle-relative POSIX name: leading ``/`` and ``./`` stripped; ``..``, empty
    names, backslashes and NUL refused (ArchiveError naming ``where`` or the entry)."""
    if "\\" in name or "\x00" in name:
        raise ArchiveError(where or name, f"unsafe entry name {name!r}")
    _utf8_name(name, where)
    rel = name
    while rel.startswith(("/", "./")):
        rel = rel[1:] if rel.startswith("/") else rel[2:]
    parts = rel.split("/")
    if rel.endswith("/"):
        parts = parts[:-1]
    if not parts or any(p in ("", ".", "..") for p in parts):
        raise ArchiveError(where or name, f"unsafe entry name {name!r} (empty, '.' or '..')")
    return "/".join(parts)


def read_tarball(
    raw: bytes,
    display: str = "<bundle>",
    *,
    max_file_bytes: int = MAX_FILE_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> dict[str, bytes]:
    """The regular files of a gzipped tar, ``{clean name: bytes}`` in archive order."""
    if raw[:2] != b"\x1f\x8b":
        raise ArchiveError(display, "not a gzip file (a bundle is a .tar.gz)")
    files: dict[str, bytes] = {}
    total = 0
    entries = 0
    try:
        # Stream mode: no seeking, members are read once, in order.
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r|gz") as tar:
            for member in tar:
                entries += 1
                if entries > MAX_ENTRIES:
                    raise ArchiveError(display, f"more than {MAX_ENTRIES} entries")
                if member.isdir():
                    clean_name(member.name, f"{display}: {member.name}")
                    continue
                if not member.isfile():
                    kind = ("a symbolic link" if member.issym() else
                            "a hard link" if member.islnk() else "a device or FIFO")
                    raise ArchiveError(
                        member.name, f"is {kind}: bundles may hold regular files only")
                name = clean_name(member.name)
                if member.size > max_file_bytes:
                    raise ArchiveError(
                        name, f"{member.size} bytes: larger than the {max_file_bytes}-byte "
                        "limit for one file")
                total += member.size
                if total > max_total_bytes:
                    raise ArchiveError(
                        display, f"more than {max_total_bytes} bytes once decompressed")
                if name in files:
                    raise ArchiveError(name, "appears twice in the archive")
                fh = tar.extractfile(member)
                data = fh.read(max_file_bytes + 1) if fh is not None else b""
                if len(data) != member.size:
                    raise ArchiveError(name, "truncated entry")
                files[name] = data
    except ArchiveError:
        raise
    except (tarfile.TarError, OSError, EOFError, gzip.BadGzipFile, ValueError) as exc:
        raise ArchiveError(display, f"not a readable .tar.gz: {exc}") from None
    return files


def write_tarball(files: Mapping[str, bytes]) -> bytes:
    """A deterministic ``.tar.gz`` of ``files`` (``{name: bytes}``), sorted by name."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(files, key=lambda n: n.encode("utf-8")):
                content = files[name]
                info = tarfile.TarInfo(clean_name(name))
                info.size = len(content)
                info.mtime = 0
                info.mode = 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.type = tarfile.REGTYPE
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def _read_regular(path: Path, rel: str, max_file_bytes: int) -> bytes:
    try:
        st = path.lstat()
    except OSError as exc:
        raise ArchiveError(rel, f"cannot read: {exc.strerror or exc}") from None
    if path.is_symlink():
        raise ArchiveError(rel, "is a symbolic link: bundles may hold regular files only")
    if st.st_size > max_file_bytes:
        raise ArchiveError(rel, f"larger than the {max_file_bytes}-byte limit for one file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ArchiveError(rel, f"cannot read: {exc.strerror or exc}") from None


def _walk(root: Path) -> list[tuple[str, Path, bool]]:
    """(relative name, path, hidden) for every non-directory under root, sorted; symlinked
    directories are reported as entries (so that callers refuse them)."""
    out: list[tuple[str, Path, bool]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        rel_dir = here.relative_to(root)
        hidden_dir = any(p.startswith(".") for p in rel_dir.parts)
        for d in list(dirnames):
            if (here / d).is_symlink():
                dirnames.remove(d)
                filenames.append(d)
        dirnames.sort()
        for fname in sorted(filenames):
            rel = (rel_dir / fname).as_posix()
            _utf8_name(rel)
            out.append((rel, here / fname, hidden_dir or fname.startswith(".")))
    out.sort(key=lambda t: t[0].encode("utf-8"))
    return out


def read_directory(root: Path, *, max_file_bytes: int = MAX_FILE_BYTES,
                   max_total_bytes: int = MAX_TOTAL_BYTES) -> dict[str, bytes]:
    """Every regular file under ``root`` (a signed directory bundle: all files count,
    as in OPA). Symbolic links are refused."""
    files: dict[str, bytes] = {}
    total = 0
    for rel, path, _hidden in _walk(root):
        data = _read_regular(path, rel, max_file_bytes)
        total += len(data)
        if total > max_total_bytes or len(files) >= MAX_ENTRIES:
            raise ArchiveError(str(root), "directory too large for a bundle")
        files[rel] = data
    return files


def collect_policy_files(root: Path, *, max_file_bytes: int = MAX_FILE_BYTES
                         ) -> dict[str, bytes]:
    """What ``bundle build`` packs from a source directory: ``*.rego``, ``data.json``,
    ``data.yaml``/``data.yml`` and the top-level ``.manifest``; hidden files and
    directories (``.git``, ``.signatures.json``...) and everything else are skipped. A
    symbolic link that would be packed is refused."""
    if not root.is_dir():
        raise ArchiveError(str(root), "not a directory")
    files: dict[str, bytes] = {}
    for rel, path, hidden in _walk(root):
        base = PurePosixPath(rel).name
        if rel == MANIFEST:
            files[rel] = _read_regular(path, rel, max_file_bytes)
            continue
        if hidden or not (base.endswith(".rego") or base in POLICY_DATA_NAMES):
            continue
        files[rel] = _read_regular(path, rel, max_file_bytes)
    return files
