"""The optional C modules: one list of them, and the layering they must not break."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from gateway import native

ROOT = Path(__file__).resolve().parents[1]


def test_every_built_extension_is_listed_once() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    built = [(m["name"], m["sources"]) for m in config["tool"]["setuptools"]["ext-modules"]]
    assert sorted(name for name, _ in built) == sorted(native.MODULES)
    for name, sources in built:
        assert sources == [name.replace(".", "/") + ".c"]
        assert (ROOT / sources[0]).is_file()


def test_wire_imports_nothing_else_from_gateway() -> None:
    # DESIGN §1: wire/ depends on nothing else in the package (so it loads _framing itself)
    for path in sorted((ROOT / "gateway" / "wire").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert not node.module.startswith("gateway") or \
                    node.module.startswith("gateway.wire"), (path.name, node.module)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("gateway") or \
                        alias.name.startswith("gateway.wire"), (path.name, alias.name)
