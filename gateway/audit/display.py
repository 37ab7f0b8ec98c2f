"""Record fields made text for the readers: a crafted log may hold any JSON type where
the gateway writes a string or a list of them, and a reader shows it rather than fail.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["joined", "json_text", "text_of"]


def json_text(value: Any) -> str:
    """`value` as compact JSON (a record's odd-typed field, shown as what it is)."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    except RecursionError:  # parsed near the recursion limit, dumped from deeper down
        return "[nested too deeply to show]"
    except (TypeError, ValueError):  # not from JSON: never in a parsed record
        return repr(value)


def text_of(value: Any) -> str:
    """A field as text: a string as it is, a missing one (null) as ``-``, anything else
    (numbers, lists, objects) as its JSON text."""
    if value is None:
        return "-"
    return value if isinstance(value, str) else json_text(value)


def joined(value: Any, sep: str = ",") -> str:
    """A list field's items as text joined by `sep` (``-`` when empty); a field that is
    not a list, as its JSON text."""
    if not isinstance(value, list):
        return text_of(value)
    return sep.join(text_of(x) for x in value) or "-"
