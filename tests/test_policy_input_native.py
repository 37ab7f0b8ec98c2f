"""The compiled input walk (`gateway/policy/_input.c`) against the Python walk it replaces
in `runtime.build_input`.

For random documents (any text — quotes, backslashes, control characters, NUL,
non-ASCII, lone surrogates —, integers in and out of int64, non-finite floats, tuples,
subclasses of the JSON types, non-string keys, deep nesting) the input rego-cpp receives
must be the same: a policy that echoes the input, and the order in which it walks the
top object's keys, must answer the same text; where the Python walk raises, the public
`build_input` must raise the same error. For plain JSON the C walk must do the whole
job itself (not leave it to the Python walk), or it would be dead code that passes.
"""

from __future__ import annotations

import enum
import os
import types
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.policy import runtime

pytestmark = pytest.mark.skipif(
    runtime._native is None,
    reason="the C input walk is not in use (not built: no C compiler at install; or "
           "PGWARDEN_PURE_PYTHON is set)")

EXAMPLES = int(os.environ.get("PGWARDEN_NATIVE_EXAMPLES", "300"))

ECHO = """package t
import rego.v1
out := {"input": input, "order": [k | some k; _ = input[k]]}
"""


@pytest.fixture(scope="module")
def echo() -> runtime.CompiledPolicy:
    # Keys the policy does not mention keep their given order; rank a few to reorder them.
    policy = runtime.compile_policy({"echo.rego": ECHO}, None, ["t/out"])
    policy.key_order = runtime.KeyOrder({"b": 0, "a": 1, "é": 2})
    return policy


class Kind(enum.IntEnum):
    ONE = 1


class Label(str):
    pass


text = st.text(max_size=12)
plain_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                            blacklist_characters="\x00"), max_size=12)
plain_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False), plain_text,
    st.sampled_from(["back\\slash", 'say "hi"', "line\nbreak", "tab\t", "\x7f", "é"]))
odd_scalars = st.one_of(
    text, st.integers(-(2**70), 2**70), st.floats(), st.just(Kind.ONE), st.just(Label("x")),
    st.just(b"bytes"), st.just({1, 2}), st.just("\ud800"), st.just("a\x00b"))
plain_keys = st.one_of(st.sampled_from(["a", "b", "é", 'q"', "\\", "\n"]), plain_text)
keys = st.one_of(plain_keys, text)


def documents(scalars: st.SearchStrategy[Any], odd: bool) -> st.SearchStrategy[Any]:
    def containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        options = [st.lists(children, max_size=4),
                   st.dictionaries(keys if odd else plain_keys, children, max_size=4)]
        if odd:
            options += [
                st.lists(children, max_size=3).map(tuple),
                st.dictionaries(keys, children, max_size=3).map(types.MappingProxyType),
                st.dictionaries(st.integers(0, 3), children, min_size=1, max_size=2),
            ]
        return st.one_of(options)
    return st.recursive(scalars, containers, max_leaves=12)


def outcome(policy: runtime.CompiledPolicy, walk: str, value: Any) -> tuple[str, str]:
    """What rego-cpp makes of `value` built by one walk: its echo, or the error raised."""
    order = policy.key_order
    assert order is not None
    try:
        if walk == "native":
            p = runtime.build_input(value, order)
        else:
            p = runtime._new_input()
            p = runtime._build(p, value, order)
    except Exception as e:  # the walks must fail the same way, so compare what they raise
        return ("raised", f"{type(e).__name__}: {e}")
    try:
        with policy._lock:
            assert runtime._set_input(policy._impl, p) == 0
            out = runtime._query_entrypoint(policy._impl, policy._bundle_impl,
                                            policy._ep_bytes["t/out"])
            try:
                return ("ok", policy._output_text(out))
            finally:
                runtime._free_output(out)
    finally:
        runtime._free_input(p)


def c_walk(policy: runtime.CompiledPolicy, value: Any) -> bool:
    """Whether the C walk handed all of `value` over by itself (False: it left it)."""
    native, order = runtime._native, policy.key_order
    assert native is not None and order is not None
    p = runtime._new_input()
    try:
        return native.build(p, value, order._memo, order.plan, runtime._quoted)
    finally:
        runtime._free_input(p)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(value=documents(st.one_of(plain_scalars, odd_scalars), odd=True))
def test_the_c_walk_hands_over_what_the_python_walk_does(echo: runtime.CompiledPolicy,
                                                         value: Any) -> None:
    assert outcome(echo, "native", value) == outcome(echo, "python", value)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(value=documents(plain_scalars, odd=False))
def test_the_c_walk_builds_plain_json_by_itself(echo: runtime.CompiledPolicy,
                                                value: Any) -> None:
    assert c_walk(echo, value) is True
    assert outcome(echo, "native", value)[0] == "ok"


def test_a_statement_document_is_built_by_the_c_walk(echo: runtime.CompiledPolicy) -> None:
    doc = {"statement": {"kind": "read", "sql": 'select "a\\b"\nfrom t', "limit": None,
                         "columns": [{"schema": "public", "name": "pan", "tags": ["pan"],
                                      "usage": ["output"]}], "has_where": True, "n": 2.5},
           "identity": {"groups": ("ci",)}}
    assert c_walk(echo, doc) is True
    kind, text = outcome(echo, "native", doc)
    assert kind == "ok" and '"sql":"select \\"a\\\\b\\"\\nfrom t"' in text
    assert outcome(echo, "native", doc) == outcome(echo, "python", doc)


def test_the_c_walk_leaves_deep_nesting_to_the_python_walk(
        echo: runtime.CompiledPolicy) -> None:
    deep: Any = "leaf"
    for _ in range(100):
        deep = [deep]
    assert c_walk(echo, deep) is False
    assert outcome(echo, "native", deep) == outcome(echo, "python", deep)
    assert outcome(echo, "native", deep)[0] == "ok"


def test_bad_arguments_raise() -> None:
    native = runtime._native
    assert native is not None
    p = runtime._new_input()
    try:
        with pytest.raises(ValueError):
            native.build(0, {}, {}, runtime.KeyOrder().plan, runtime._quoted)
        with pytest.raises(TypeError):
            native.build(p, {}, [], runtime.KeyOrder().plan, runtime._quoted)
        with pytest.raises(ValueError):
            native.bind((1, 2, 3))
        with pytest.raises(ValueError):
            native.bind((0,) * 8)
        # A plan that is not what KeyOrder.plan returns is left to the Python walk.
        assert native.build(p, {"a": 1}, {}, lambda d: "nonsense", runtime._quoted) is False
        with pytest.raises(ZeroDivisionError):
            native.build(p, {"a": 1}, {}, lambda d: 1 / 0, runtime._quoted)
    finally:
        runtime._free_input(p)
