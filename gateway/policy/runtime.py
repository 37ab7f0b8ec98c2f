"""A thin, fast layer over regopy's C API.

Why not just ``regopy.Interpreter.query_bundle_entrypoint``? Measured differences and
behaviours that matter to a gateway (regopy 1.5.2 / rego-cpp):

* ``regopy.Input`` builds the input document with several wrapped ctypes calls per node;
  the loop here calls the C functions directly (about 1.5x faster for a statement-sized
  document). ``set_input_term`` (JSON text parsed by rego-cpp) is slower still.
* ``regopy.Input`` passes strings bare, but rego-cpp keeps string terms in source form:
  a string with ``"``, ``\\`` or a control character then never equals the same literal
  in a policy, and comes back as invalid JSON. Such strings are passed as their JSON
  literal here. (Remaining rego-cpp quirks: ``count``/``substring``/``indexof``/``regex.*``
  see the escaped text of such strings, e.g. ``count("a\\"b") == 4``; ``sprintf`` with
  ``%s``/``%v`` and surrounding text inserts computed strings with their JSON quotes,
  so the result is unreadable and the decision fails closed. Use ``concat``.)
* ``regopy.Output`` parses the result eagerly and raises ``JSONDecodeError`` when the
  engine returns an error node with ``ok() == True`` (it does for "Function not found"
  and "Recursion detected"). Here every outcome is one of: a value, ``UNDEFINED``, or
  :class:`EvalError` with the engine's own messages.
* Interpreters log compile errors to stdout by default; they are created with
  ``LogLevel.NONE`` so the gateway's stdout (JSON logs) stays clean.
* ``print()`` in a policy writes to the process's stdout (C stdio); :func:`capture_c_stdout`
  redirects it for the CLI and the test runner.

What a decision costs in rego-cpp (regopy 1.5.2, measured): mostly ``rego::to_key``, which
builds a ``std::ostringstream`` per call. A field lookup (``x.name``) makes about three such
calls per member it walks past (an object's keys are ``Term(Scalar(String))`` nodes), so
``input.statement.details`` costs more the later ``details`` comes in the object. Every
builtin call also copies the evaluation state, whose size grows with the policy. Hence
:class:`KeyOrder`: input objects (and the data documents, at compile time) are handed to
rego-cpp with the keys the policy mentions first, in the order it first mentions them
(:func:`field_order`), then the other keys. Only the order changes: equality,
``object.keys``, ``json.marshal``, printing and so the decision are unaffected (rego-cpp
sorts keys whenever it compares or prints an object); the one observable difference is
the order in which an iteration (``some k; obj[k]``) walks an object, which rego-cpp takes
as handed over and OPA sorts by key, so no portable policy depends on it.

Likewise the input is handed over without the parts a policy provably never reads
(:func:`input_paths`): when every ``input`` in the modules is a static reference
(``input.statement``, ``input.identity.groups``, ``input["approval"].granted``), only
those subtrees are built, whole; a policy that uses ``input`` any other way
(``json.marshal(input)``, ``input[k]``, ``x := input``...) gets all of it. Building and
copying an input term is a large share of a decision, and the session facts
(``connection``, most of ``identity``) are often never read.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from regopy import Interpreter
from regopy.rego_shared import LogLevel, RegoError, rego

from gateway import native
from gateway.policy.decision import UNDEFINED
from gateway.policy.errors import PolicyCompileError
from gateway.policy.scan import scan_module, tokenize

__all__ = [
    "UNDEFINED",
    "CompiledPolicy",
    "EvalError",
    "KeyOrder",
    "capture_c_stdout",
    "check_known_crashes",
    "compile_policy",
    "field_order",
    "input_paths",
    "new_interpreter",
    "probe_compile",
    "prune_input",
    "result_value",
]

# -- C entry points (argtypes are declared by regopy.rego_shared) -------------------------
_new_input = rego.regoNewInput
_free_input = rego.regoFreeInput
_in_int = rego.regoInputInt
_in_float = rego.regoInputFloat
_in_str = rego.regoInputString
_in_bool = rego.regoInputBoolean
_in_null = rego.regoInputNull
_in_item = rego.regoInputObjectItem
_in_object = rego.regoInputObject
_in_array = rego.regoInputArray
_set_input = rego.regoSetInput
_query_entrypoint = rego.regoBundleQueryEntrypoint
_output_ok = rego.regoOutputOk
_output_json_size = rego.regoOutputJSONSize
_output_json = rego.regoOutputJSON
_output_node = rego.regoOutputNode
_free_output = rego.regoFreeOutput
_node_type_name_size = rego.regoNodeTypeNameSize
_node_type_name = rego.regoNodeTypeName
_node_value_size = rego.regoNodeValueSize
_node_value = rego.regoNodeValue
_node_size = rego.regoNodeSize
_node_get = rego.regoNodeGet
_get_error_size = rego.regoErrorSize
_get_error = rego.regoError

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

# The same walk as build_input's, compiled (gateway/policy/_input.c): None when not built.
_native = native.load("gateway.policy._input")
if _native is not None:
    _native.bind(tuple(ctypes.cast(f, ctypes.c_void_p).value for f in (
        _in_int, _in_float, _in_str, _in_bool, _in_null, _in_item, _in_object, _in_array)))


class EvalError(Exception):
    """Evaluation failed inside the engine (conflict, builtin error, unknown function...)."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message, code)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return f"{self.message} ({self.code})" if self.code else self.message


def new_interpreter(*, strict_builtin_errors: bool = True) -> Interpreter:
    """An interpreter that logs nothing and (by default) surfaces builtin errors.

    With ``strict_builtin_errors`` a failing builtin (``regex.match("(?i)x", s)``,
    ``to_number("abc")``, any ``net.*``) is an evaluation error instead of a silently
    undefined expression, so a ``deny`` rule cannot vanish by accident: fail closed.
    """
    interp = Interpreter()
    interp.log_level = LogLevel.NONE
    interp.strict_built_in_errors = strict_builtin_errors
    return interp


# -- compile ---------------------------------------------------------------------------


def _line_col(text: str, offset: int) -> tuple[int, int]:
    raw = text.encode("utf-8")
    offset = max(0, min(offset, len(raw)))
    prefix = raw[:offset]
    line = prefix.count(b"\n") + 1
    last = prefix[prefix.rfind(b"\n") + 1 :]
    return line, len(last.decode("utf-8", errors="replace")) + 1


_LEN_PREFIX = re.compile(rb"(\d+):")
_LOCATION = re.compile(rb"\|(\d+)\|(\d+)")


def parse_error_text(text: str) -> list[tuple[str | None, int | None, str]]:
    """Pull ``(file, byte offset, message)`` out of rego-cpp's error S-expression.

    The text looks like ``(rego-errorseq (error 8:bad.rego|32|2 (errormsg 24:Invalid
    boolean operator) ...))``: strings are length-prefixed, locations are ``|offset|len``.
    """
    blob = text.encode("utf-8")
    out: list[tuple[str | None, int | None, str]] = []
    i = 0
    while True:
        i = blob.find(b"(error", i)
        if i < 0:
            break
        j = i + len(b"(error")
        if blob[j : j + 1] not in (b" ", b"\n"):
            i = j
            continue
        file: str | None = None
        offset: int | None = None
        m = _LEN_PREFIX.match(blob, j + 1)
        if m:
            n = int(m.group(1))
            file = blob[m.end() : m.end() + n].decode("utf-8", errors="replace")
            loc = _LOCATION.match(blob, m.end() + n)
            if loc:
                offset = int(loc.group(1))
        msg = ""
        k = blob.find(b"(errormsg ", j)
        nxt = blob.find(b"(error ", j)
        if k >= 0 and (nxt < 0 or k < nxt):
            m = _LEN_PREFIX.match(blob, k + len(b"(errormsg "))
            if m:
                n = int(m.group(1))
                msg = blob[m.end() : m.end() + n].decode("utf-8", errors="replace")
                j = m.end() + n
        out.append((file, offset, msg.strip()))
        i = j
    return out


def compile_error(
    exc: RegoError, modules: Mapping[str, str], fallback_file: str | None
) -> PolicyCompileError:
    """Turn a RegoError into a PolicyCompileError naming file:line:col."""
    errors = parse_error_text(str(exc))
    if not errors:
        text = str(exc).strip() or "regopy rejected the policy"
        return PolicyCompileError(fallback_file, text)
    file, offset, msg = errors[0]
    line = col = None
    if file is not None and file in modules and offset is not None:
        line, col = _line_col(modules[file], offset)
    elif file not in modules:
        file = fallback_file if file is None else file
    extra = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return PolicyCompileError(file, (msg or "compile error") + extra, line, col)


class CompiledPolicy:
    """A built regopy bundle plus the interpreter that runs it.

    ``evaluate`` is serialized by a lock: an interpreter holds one input at a time and
    the C calls release the GIL.
    """

    def __init__(
        self,
        interp: Interpreter,
        bundle: Any,
        entrypoints: Sequence[str],
        key_order: KeyOrder | None = None,
        input_shape: InputPaths | None = None,
    ) -> None:
        self._interp = interp
        self._bundle = bundle
        self._impl = interp._impl
        self._bundle_impl = bundle._impl
        self.entrypoints = tuple(entrypoints)
        self._ep_bytes = {ep: ctypes.create_string_buffer(ep.encode()) for ep in entrypoints}
        self._lock = threading.Lock()
        self._out_buf = ctypes.create_string_buffer(4096)
        self.key_order = key_order
        self.input_shape = input_shape

    def evaluate(self, entrypoint: str, input_value: Any = UNDEFINED) -> Any:
        """Evaluate one entrypoint; return its value or ``UNDEFINED``; raise EvalError."""
        text = self.evaluate_json(entrypoint, input_value)
        return UNDEFINED if text is None else result_value(text)

    def evaluate_json(self, entrypoint: str, input_value: Any = UNDEFINED) -> str | None:
        """Like :meth:`evaluate`, but the engine's JSON text of the result (read it with
        :func:`result_value`), or None when the entrypoint is undefined."""
        ep = self._ep_bytes.get(entrypoint)
        if ep is None:
            raise EvalError(f"entrypoint {entrypoint} was not compiled into this policy")
        p_input = None
        if input_value is not UNDEFINED:
            p_input = build_input(prune_input(input_value, self.input_shape), self.key_order)
        try:
            with self._lock:
                if p_input is not None and _set_input(self._impl, p_input) != 0:
                    raise EvalError(_last_error(self._impl) or "could not set the input")
                p_out = _query_entrypoint(self._impl, self._bundle_impl, ep)
                if not p_out:
                    raise EvalError(_last_error(self._impl) or "evaluation failed")
                try:
                    ok = _output_ok(p_out)
                    text = self._output_text(p_out)
                    if ok and text[:1] in ("{", "["):
                        return text
                    if ok and text == "undefined":
                        return None
                    raise _output_error(p_out, text)
                finally:
                    _free_output(p_out)
        finally:
            if p_input is not None:
                _free_input(p_input)

    def _output_text(self, p_out: int) -> str:
        # Called under the lock: one reusable buffer covers the usual decision.
        size = _output_json_size(p_out) + 1
        buf = self._out_buf
        if size > len(buf):
            buf = ctypes.create_string_buffer(size)
        if _output_json(p_out, buf, size) != 0:
            return "<error>"
        return buf.value.decode("utf-8", errors="replace")


def check_known_crashes(modules: Mapping[str, str]) -> None:
    """Refuse Rego that makes regopy 1.5.2 abort the whole process while compiling.

    ``with input as <value>`` (replacing the entire input) aborts with ``std::terminate``
    ("shape rego-localref has no field rego-refhead") as soon as the rule it evaluates
    calls any builtin. Replacing one field at a time (``with input.statement as ...``)
    works.
    """
    for name, text in modules.items():
        if "with" not in text:
            continue
        for clause in scan_module(text).withs:
            if clause.target == "input":
                raise PolicyCompileError(
                    name,
                    "`with input as ...` (replacing the whole input) crashes regopy; "
                    "replace each field instead: `with input.statement as ...`",
                    clause.line,
                    clause.col,
                )


_PROBE = """
import json, sys
from gateway.policy.runtime import compile_policy
job = json.load(sys.stdin)
try:
    compile_policy(job["modules"], job["data"], job["entrypoints"])
except Exception as exc:
    print(exc, file=sys.stderr)
    sys.exit(1)
"""


def probe_compile(
    modules: Mapping[str, str],
    data: Mapping[str, Any] | None,
    entrypoints: Sequence[str],
    *,
    timeout: float = 120.0,
) -> str | None:
    """Compile in a child process first: rego-cpp can *abort* the process on some input.

    Returns None when the child survived (compile errors are left to the in-process
    compile, which reports them properly), else a message saying how it died. Costs a
    Python start-up (~0.3 s): use it where a crash would hurt (activating a new bundle
    in the gateway, the CLI), not per statement.
    """
    import subprocess
    from pathlib import Path

    job = json.dumps(
        {"modules": dict(modules), "data": dict(data or {}), "entrypoints": list(entrypoints)}
    )
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE],
            input=job,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"regopy did not finish compiling this policy within {timeout:g} s"
    if proc.returncode >= 0 and "terminate called" not in proc.stderr:
        return None
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
    detail = lines[-1] if lines else f"signal {-proc.returncode}"
    return f"regopy aborted while compiling this policy ({detail})"


def compile_policy(
    modules: Mapping[str, str],
    data: Mapping[str, Any] | None,
    entrypoints: Sequence[str],
    *,
    strict_builtin_errors: bool = True,
    order_keys: bool = True,
    prune: bool = True,
) -> CompiledPolicy:
    """Add data + modules to a fresh interpreter and build a bundle for ``entrypoints``.

    ``order_keys``: hand input objects (and the data documents) over with the keys the
    modules mention first (:class:`KeyOrder`); same values, cheaper lookups. ``prune``:
    leave out of the input what the modules provably never read (:func:`input_paths`).

    Raises PolicyCompileError naming the file (and line/column from the byte offset
    rego-cpp reports).
    """
    check_known_crashes(modules)
    interp = new_interpreter(strict_builtin_errors=strict_builtin_errors)
    key_order = KeyOrder(field_order(modules)) if order_keys else None
    if data:
        if key_order is not None:
            data = key_order.reorder(data)
        try:
            interp.add_data_json(json.dumps(data, ensure_ascii=False, allow_nan=False))
        except RegoError as exc:
            raise PolicyCompileError("data", f"regopy rejected the data: {exc}") from None
    for name, text in modules.items():
        try:
            interp.add_module(name, text)
        except RegoError as exc:
            raise compile_error(exc, modules, name) from None
    try:
        # With no entrypoint (nothing to run, but the modules must still compile), build
        # a trivial query.
        bundle = interp.build(None if entrypoints else "true", list(entrypoints))
    except RegoError as exc:
        raise compile_error(exc, modules, None) from None
    if not bundle.ok():
        raise PolicyCompileError(None, "regopy could not build the policy")
    shape = input_paths(modules) if prune else None
    return CompiledPolicy(interp, bundle, entrypoints, key_order, shape)


# -- input ------------------------------------------------------------------------------


_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f]')


def _quote(v: str) -> bytes:
    """A string the way rego-cpp needs it.

    rego-cpp keeps string terms in source form. Bare text works for ordinary strings,
    but one containing ``"``, ``\\`` or a control character (what ``regopy.Input`` passes
    as is) then never equals the same literal in a policy and comes back as invalid
    JSON; such strings are handed over as their JSON literal instead. (Ordinary strings
    stay bare: rego-cpp's ``sprintf`` would print a quoted literal with its quotes.)
    """
    if "\x00" in v:
        raise EvalError("input string contains a NUL byte")
    if _NEEDS_ESCAPE.search(v) is None:
        return v.encode("utf-8")
    return json.dumps(v, ensure_ascii=False).encode("utf-8")


# Encoded short strings (object keys, kinds, names...): most of an input document repeats
# from one statement to the next. Bounded; cleared when full.
_QUOTED: dict[str, bytes] = {}
_QUOTED_MAX = 4096
_QUOTED_MAX_LEN = 48


def _quoted(v: str) -> bytes:
    b = _QUOTED.get(v)
    if b is None:
        b = _quote(v)
        if len(v) <= _QUOTED_MAX_LEN:
            if len(_QUOTED) >= _QUOTED_MAX:
                _QUOTED.clear()
            _QUOTED[v] = b
    return b


def field_order(modules: Mapping[str, str]) -> dict[str, int]:
    """Every name the modules may read out of a document by name — a ``.name`` or a
    string literal (``x["name"]``, ``object.get(x, "name", d)``) — ranked by where the
    modules (in name order) first mention it."""
    rank: dict[str, int] = {}
    for name in sorted(modules):
        prev = None
        for tok in tokenize(modules[name]):
            if tok.kind == "string" or (
                tok.kind == "ident" and prev is not None and prev.kind == "op" and prev.text == "."
            ):
                rank.setdefault(tok.text, len(rank))
            if tok.kind != "newline":
                prev = tok
    return rank


# The input a policy can read: {key: sub-shape}, where a sub-shape of None means "the
# whole value". None (no shape at all) means the whole input.
InputPaths = dict[str, Any]


def input_paths(modules: Mapping[str, str]) -> InputPaths | None:
    """The parts of the input the modules can read, or None for all of it.

    Every ``input`` token must start a static reference: ``.name`` / ``["name"]``
    segments, as many as are written (``input.identity.groups[_]`` reads ``identity.groups``,
    whole). Anything else -- ``input`` alone, ``input[x]``, ``input[0]`` -- may read any part,
    and the answer is None. Module names are irrelevant: the union over all modules.
    """
    shape: InputPaths = {}
    for text in modules.values():
        tokens = tokenize(text)
        n = len(tokens)
        for i, tok in enumerate(tokens):
            if tok.kind != "ident" or tok.text != "input":
                continue
            if i and tokens[i - 1].kind == "op" and tokens[i - 1].text == ".":
                continue  # a field named "input" (x.input), not the input document
            path: list[str] = []
            k = i + 1
            while k < n:
                a = tokens[k]
                if a.kind == "op" and a.text == "." and k + 1 < n and tokens[k + 1].kind == "ident":
                    path.append(tokens[k + 1].text)
                    k += 2
                elif (
                    a.kind == "op"
                    and a.text == "["
                    and k + 2 < n
                    and tokens[k + 1].kind == "string"
                    and tokens[k + 2].kind == "op"
                    and tokens[k + 2].text == "]"
                ):
                    path.append(tokens[k + 1].text)
                    k += 3
                else:
                    break
            if not path:
                return None
            node: InputPaths | None = shape
            for j, part in enumerate(path):
                assert node is not None
                if j == len(path) - 1:
                    node[part] = None  # read whole from here
                    break
                if part in node and node[part] is None:
                    break  # already read whole
                node = node.setdefault(part, {})
    return shape


def prune_input(value: Any, shape: InputPaths | None) -> Any:
    """``value`` with only the parts ``shape`` (see :func:`input_paths`) lets a policy read.

    Non-object values on a path are kept whole; nothing is copied that need not be. What
    is left out is still checked the way :func:`build_input` checks what it builds, so an
    input that is not JSON fails closed (EvalError) whatever the policy reads.
    """
    if shape is None or type(value) is not dict:
        return value
    out = {}
    for key, item in value.items():
        if key in shape:
            sub = shape[key]
            out[key] = item if sub is None else prune_input(item, sub)
        else:
            if type(key) is not str:
                raise EvalError(f"input object key {key!r} is not a string")
            _check_json(key)
            _check_json(item)
    return out


def _check_json(v: Any) -> None:
    """Raise EvalError where :func:`build_input` would (same rules, nothing built)."""
    t = type(v)
    if t is str:
        if "\x00" in v:
            raise EvalError("input string contains a NUL byte")
    elif t is dict:
        for key, item in v.items():
            if type(key) is not str:
                raise EvalError(f"input object key {key!r} is not a string")
            _check_json(key)
            _check_json(item)
    elif t is list or t is tuple:
        for item in v:
            _check_json(item)
    elif t is bool or v is None:
        pass
    elif t is int:
        if not _INT64_MIN <= v <= _INT64_MAX:
            raise EvalError("input integer out of the 64-bit range")
    elif t is float:
        if not math.isfinite(v):
            raise EvalError("input number is not finite")
    elif isinstance(v, Mapping):
        _check_json(dict(v))
    elif isinstance(v, bool):
        pass
    elif isinstance(v, int):
        _check_json(int(v))
    elif isinstance(v, float):
        _check_json(float(v))
    elif isinstance(v, str):
        _check_json(str.__str__(v))
    else:
        raise EvalError(f"input value of type {t.__name__} is not JSON")


class KeyOrder:
    """The order in which an input object's keys are handed to rego-cpp: the keys the
    policy mentions first, by ``rank``, then the others as given (no ``rank``: as
    given). Worked out once per key tuple (bounded), since input objects come in few
    shapes, together with each key's encoded form."""

    __slots__ = ("_memo", "_rank")

    MAX_SHAPES = 1024

    def __init__(self, rank: Mapping[str, int] | None = None) -> None:
        self._rank = dict(rank or {})
        self._memo: dict[tuple[Any, ...], tuple[tuple[str, bytes], ...]] = {}

    def plan(self, obj: Mapping[str, Any]) -> tuple[tuple[str, bytes], ...]:
        """``(key, encoded key)`` for every key of ``obj``, in hand-over order.

        Raises EvalError for a key that is not a string (or holds a NUL byte).
        """
        shape = tuple(obj)
        plan = self._memo.get(shape)
        if plan is None:
            for key in shape:
                if type(key) is not str:
                    raise EvalError(f"input object key {key!r} is not a string")
            rank = self._rank
            ordered = shape
            if rank:
                big = len(rank)
                places = sorted(range(len(shape)), key=lambda i: (rank.get(shape[i], big), i))
                ordered = tuple(shape[i] for i in places)
            plan = tuple((key, _quote(key)) for key in ordered)
            if len(self._memo) >= self.MAX_SHAPES:
                self._memo.clear()
            self._memo[shape] = plan
        return plan

    def reorder(self, value: Any) -> Any:
        """A copy of JSON data with every object's keys in hand-over order (for the
        bundle's data documents, which are looked up the same way)."""
        if isinstance(value, Mapping):
            return {k: self.reorder(value[k]) for k, _ in self.plan(value)}
        if isinstance(value, list | tuple):
            return [self.reorder(v) for v in value]
        return value


_AS_GIVEN = KeyOrder()


def build_input(value: Any, key_order: KeyOrder | None = None) -> int:
    """Build a regopy input term from JSON-like Python data; caller frees it.

    Only JSON types are accepted (dict with str keys, list/tuple, str, int, float, bool,
    None); anything else, NUL bytes in strings, non-finite floats or integers outside
    int64 raise EvalError so that the decision fails closed. ``key_order`` (a
    :class:`KeyOrder`) chooses the order in which each object's keys are handed over.
    """
    p = _new_input()
    if not p:
        raise EvalError("could not allocate an input")
    order = key_order or _AS_GIVEN
    if _native is not None:
        try:
            if _native.build(p, value, order._memo, order.plan, _quoted):
                return p
        except BaseException:
            _free_input(p)
            raise
        # Something the compiled walk leaves to this one: start over, and name it.
        _free_input(p)
        p = _new_input()
        if not p:
            raise EvalError("could not allocate an input")
    return _build(p, value, order)


def _build(p: int, value: Any, order: KeyOrder) -> int:
    in_str, in_item, in_object, in_array = _in_str, _in_item, _in_object, _in_array
    quoted_get, quoted = _QUOTED.get, _quoted
    plan, known_plan = order.plan, order._memo.get

    def add(v: Any) -> None:
        t = type(v)
        if t is str:
            rc = in_str(p, quoted_get(v) or quoted(v))
        elif t is dict:
            for key, encoded in known_plan(tuple(v)) or plan(v):
                if in_str(p, encoded):
                    raise EvalError("could not build the input")
                item = v[key]
                if type(item) is str:  # most values: skip a call
                    if in_str(p, quoted_get(item) or quoted(item)):
                        raise EvalError("could not build the input")
                else:
                    add(item)
                if in_item(p):
                    raise EvalError("could not build the input")
            rc = in_object(p, len(v))
        elif t is list or t is tuple:
            for item in v:
                if type(item) is str:
                    if in_str(p, quoted_get(item) or quoted(item)):
                        raise EvalError("could not build the input")
                else:
                    add(item)
            rc = in_array(p, len(v))
        elif t is bool:
            rc = _in_bool(p, v)
        elif v is None:
            rc = _in_null(p)
        elif t is int:
            if not _INT64_MIN <= v <= _INT64_MAX:
                raise EvalError("input integer out of the 64-bit range")
            rc = _in_int(p, v)
        elif t is float:
            if not math.isfinite(v):
                raise EvalError("input number is not finite")
            rc = _in_float(p, v)
        elif isinstance(v, Mapping):
            add(dict(v))
            return
        elif isinstance(v, bool):  # subclasses of the JSON scalars (IntEnum, StrEnum...)
            add(bool(v))
            return
        elif isinstance(v, int):
            add(int(v))
            return
        elif isinstance(v, float):
            add(float(v))
            return
        elif isinstance(v, str):
            add(str.__str__(v))
            return
        else:
            raise EvalError(f"input value of type {t.__name__} is not JSON")
        if rc:
            raise EvalError("could not build the input")

    try:
        add(value)
    except BaseException:
        _free_input(p)
        raise
    return p


# -- output -----------------------------------------------------------------------------


def result_value(text: str) -> Any:
    """The entrypoint's value in the engine's JSON text of a result."""
    try:
        out = json.loads(text)
    except ValueError as exc:
        raise EvalError(f"engine returned unreadable output: {exc}") from None
    if isinstance(out, list):
        if len(out) != 1:
            raise EvalError(f"entrypoint produced {len(out)} results, expected one")
        out = out[0]
    exprs = out.get("expressions") if isinstance(out, dict) else None
    if not exprs:
        return UNDEFINED
    return exprs[0]


def _last_error(impl: int) -> str:
    size = _get_error_size(impl)
    buf = ctypes.create_string_buffer(size + 1)
    if _get_error(impl, buf, size + 1) != 0:
        return ""
    return buf.value.decode("utf-8", errors="replace")


def _node_str(node: int, getter_size: Any, getter: Any) -> str:
    size = getter_size(node)
    buf = ctypes.create_string_buffer(size + 1)
    if getter(node, buf, size + 1) != 0:
        return ""
    return buf.value.decode("utf-8", errors="replace")


def _output_error(p_out: int, text: str) -> EvalError:
    """Collect errormsg/errorcode pairs from the output's error node(s)."""
    pairs: list[tuple[str, str]] = []

    def walk(node: int, depth: int) -> None:
        if not node or depth > 4:
            return
        kind = _node_str(node, _node_type_name_size, _node_type_name)
        if kind == "error":
            msg = code = ""
            for i in range(_node_size(node)):
                child = _node_get(node, i)
                ckind = _node_str(child, _node_type_name_size, _node_type_name)
                if ckind == "errormsg":
                    msg = _node_str(child, _node_value_size, _node_value)
                elif ckind.endswith("errorcode"):
                    code = _node_str(child, _node_value_size, _node_value)
            pairs.append((msg.strip(), code.strip()))
            return
        for i in range(_node_size(node)):
            walk(_node_get(node, i), depth + 1)

    walk(_output_node(p_out), 0)
    if not pairs:
        parsed = parse_error_text(text)
        pairs = [(m, "") for _f, _o, m in parsed if m]
    if not pairs:
        return EvalError(f"evaluation failed: {text[:200]}")
    msg, code = pairs[0]
    if len(pairs) > 1:
        msg += f" (and {len(pairs) - 1} more)"
    return EvalError(msg or "evaluation failed", code or None)


# -- stdout capture (print()) -----------------------------------------------------------

_libc = ctypes.CDLL(None)


def _flush_c_stdio() -> None:
    with contextlib.suppress(Exception):
        _libc.fflush(None)


@contextlib.contextmanager
def capture_c_stdout() -> Iterator[_Capture]:
    """Redirect fd 1 (where rego-cpp's ``print`` writes) into a temporary file.

    Process-wide: use it in the CLI and the test runner, never in the serving path.
    ``cap.take()`` returns what was printed since the last call.
    """
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    _flush_c_stdio()
    saved = os.dup(1)
    tmp = tempfile.TemporaryFile()
    cap = _Capture(tmp)
    try:
        os.dup2(tmp.fileno(), 1)
        yield cap
    finally:
        _flush_c_stdio()
        os.dup2(saved, 1)
        os.close(saved)
        cap.close()


class _Capture:
    def __init__(self, tmp: Any) -> None:
        self._tmp = tmp
        self._pos = 0
        self._closed = False

    def take(self) -> str:
        if self._closed:
            return ""
        _flush_c_stdio()
        self._tmp.seek(self._pos)
        chunk = self._tmp.read()
        self._pos += len(chunk)
        return chunk.decode("utf-8", errors="replace")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._tmp.close()
