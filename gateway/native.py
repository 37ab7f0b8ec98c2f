"""The optional compiled modules (C extensions built at install when a compiler is there).

Each has a Python twin that runs when the module was not built, or when
``PGWARDEN_PURE_PYTHON`` is set (to compare, or to rule the C code out).
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

#: Every optional C module; the source of each is its name as a path, plus ``.c``.
#: (`gateway.wire` loads its own by the same rule: wire/ imports nothing else from gateway.)
MODULES = ("gateway.audit._seal", "gateway.enforce._shape", "gateway.masking._prefilter",
           "gateway.masking._rowwalk", "gateway.policy._input", "gateway.wire._framing")


def load(name: str) -> ModuleType | None:
    """The compiled module `name`, or None: run the Python twin."""
    if os.environ.get("PGWARDEN_PURE_PYTHON"):
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def loaded() -> list[str]:
    """The compiled modules this process runs (imported by their twins), for the startup
    log: e.g. ``["gateway.audit._seal", "gateway.wire._framing"]``."""
    return [name for name in MODULES if name in sys.modules]
