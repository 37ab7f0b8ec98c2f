"""The optional compiled loops (C extensions built at install when a compiler is there).

Each has a Python twin that runs when the module was not built, or when
``PGWARDEN_PURE_PYTHON`` is set (to compare, or to rule the C code out).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

_loaded: set[str] = set()


def load(name: str) -> ModuleType | None:
    """The compiled module `name`, or None: run the Python twin."""
    if os.environ.get("PGWARDEN_PURE_PYTHON"):
        return None
    try:
        module = importlib.import_module(name)
    except ImportError:
        return None
    _loaded.add(name)
    return module


def loaded() -> list[str]:
    """The compiled modules this process runs, for the startup log (the others run in
    Python): e.g. ``["gateway.audit._seal", "gateway.wire._skip"]``."""
    return sorted(_loaded)
