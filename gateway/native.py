"""The optional compiled loops (C extensions built at install when a compiler is there).

Each has a Python twin that runs when the module was not built, or when
``PGWARDEN_PURE_PYTHON`` is set (to compare, or to rule the C code out).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType


def load(name: str) -> ModuleType | None:
    """The compiled module `name`, or None: run the Python twin."""
    if os.environ.get("PGWARDEN_PURE_PYTHON"):
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        return None
