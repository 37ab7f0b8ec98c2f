"""Record text made safe to show: what the readers print for a person.

A record's strings are the clients' (application_name, SQL text, error messages, ...),
and a log may be crafted outright, so none of their characters may act on the terminal
that shows them: line breaks would forge timeline lines, escape sequences (ESC, C1 controls
such as CSI U+009B or OSC U+009D) would run, bidi controls would reorder the line, and
invisible characters would make two texts look alike. :func:`visible` writes each such
character as a backslash escape (``\\n``, ``\\x1b``, ``\\u009b``, ``\\u202e``,
``\\U000e0041``) and a backslash as ``\\\\``, so what is shown reads back to exactly one
text. Machine formats (``show --json``, ``export --format jsonl``) are the stored bytes
and do not come here.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["joined", "json_text", "safe_json", "shows_anything", "text_of", "visible"]

# C0, DEL, C1; Arabic letter mark, LRM/RLM, the line/paragraph separators some viewers
# break lines at, the bidi embeddings/overrides and isolates; lone surrogates (JSON can
# hold them and no UTF-8 stream can write them). And what shows as nothing, so that two
# texts differing only by it (a subject, an application_name) would look the same, or a
# text would carry words no one sees (tag characters, read by language models): soft
# hyphen, combining grapheme joiner, Hangul and Khmer fillers, Mongolian selectors, zero
# width spaces and joiners, invisible operators, deprecated format controls, variation
# selectors, the BOM, interlinear annotations, tags.
_UNSAFE = ("\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069"
           "\ud800-\udfff"
           "\u00ad\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200d"
           "\u2060-\u2065\u206a-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb"
           "\U000e0000-\U000e0fff")
_SHOWN = re.compile(f"[{_UNSAFE}\\\\]")
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r", "\\": "\\\\"}


def _escape(m: re.Match[str]) -> str:
    ch = m.group()
    short = _SHORT.get(ch)
    if short is not None:
        return short
    code = ord(ch)
    if code < 0x80:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def visible(text: str, *, keep: str = "") -> str:
    """`text` with every control, bidi control and backslash escaped, but the characters
    in `keep` (CSV keeps TAB, LF and CR, which its quoting carries)."""
    if keep:
        return _SHOWN.sub(lambda m: m.group() if m.group() in keep else _escape(m), text)
    return _SHOWN.sub(_escape, text)


_INVISIBLE = re.compile(f"[{_UNSAFE}\\s]")


def shows_anything(text: str) -> bool:
    """Whether `text` has a character a person sees: not only blanks, controls, bidi
    marks and the invisible characters :func:`visible` escapes (a required reason of
    zero-width spaces is no reason)."""
    return bool(_INVISIBLE.sub("", text))


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
    (numbers, lists, objects) as its JSON text; still to be passed through
    :func:`visible` before it is shown."""
    if value is None:
        return "-"
    return value if isinstance(value, str) else json_text(value)


def joined(value: Any, sep: str = ",") -> str:
    """A list field's items as text joined by `sep` (``-`` when empty); a field that is
    not a list, as its JSON text."""
    if not isinstance(value, list):
        return text_of(value)
    return sep.join(text_of(x) for x in value) or "-"


_JSON_UNSAFE = re.compile(f"[{_UNSAFE}]")


def safe_json(value: Any) -> str:
    """One JSON line of generated output (``policy replay --json``) with the characters
    :func:`visible` escapes as JSON ``\\u`` escapes: the same JSON value, nothing raw for
    a terminal. (``json.dumps`` already escapes C0 and the backslash.)"""
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
