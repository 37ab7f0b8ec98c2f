"""`single_run`: whether a client's batch is a driver's extended-protocol run of one
statement, and its names (`gateway/wire/frontend.py`). The result tracker follows such a
statement to its end by itself (`ResultMasker.follow_alone`), so a wrong "yes" would
attach an answer to the wrong statement's audit record.

The Python reference is checked on runs drivers send and on near misses; the compiled
one (`_framing.c`) must give the same answer as the reference for every batch, valid or
not, including names that are not UTF-8 and bytes cut anywhere.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.wire import framing, frontend
from gateway.wire.frontend import Bind, Describe, Execute, Parse, Sync

SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
EXAMPLES = int(os.environ.get("PGWARDEN_NATIVE_EXAMPLES", "300")) * 3


def frames(*messages: bytes) -> list[tuple[int, bytes]]:
    return [(m[0], m[5:]) for m in messages]


def parse(name: str = "") -> bytes:
    return Parse(name, SQL, ()).encode()


def bind(portal: str = "", statement: str = "") -> bytes:
    return Bind(portal, statement, (), (b"42",), ()).encode()


def describe(kind: str = "P", name: str = "") -> bytes:
    return Describe(kind, name).encode()


def execute(portal: str = "", limit: int = 0) -> bytes:
    return Execute(portal, limit).encode()


SYNC = Sync().encode()
FLUSH = b"H\0\0\0\x04"

RUNS = [  # what drivers send, and what single_run reads from it
    ((parse(), bind(), describe(), execute(), SYNC), ("", "", "")),  # libpq, psycopg
    ((parse(), bind(), execute(), SYNC), ("", "", "")),
    ((parse("s1"), bind("", "s1"), describe("S", "s1"), execute(), SYNC), ("s1", "", "s1")),
    ((bind("", "s1"), describe(), execute(), SYNC), (None, "", "s1")),  # prepared
    ((bind("p", "s1"), describe("P", "p"), execute("p"), SYNC), (None, "p", "s1")),
    ((bind("", "s1"), execute(), SYNC), (None, "", "s1")),
    ((bind("ü", "ß"), execute("ü"), SYNC), (None, "ü", "ß")),
]

NEAR_MISSES = [  # one statement, but not a run the tracker may follow alone
    (parse("s1"), bind("", "s2"), execute(), SYNC),  # binds another statement
    (parse(), bind(), describe("P", "other"), execute(), SYNC),  # describes another portal
    (parse(), bind(), describe("S", "other"), execute(), SYNC),
    (bind("", "s1"), describe("S", "s2"), execute(), SYNC),  # (names of one length)
    (bind("p1", "s1"), describe("P", "p2"), execute("p1"), SYNC),
    (parse(), bind(), execute("other"), SYNC),  # executes another portal
    (bind("p1", "s1"), execute("p2"), SYNC),
    (parse(), bind(), execute("", 10), SYNC),  # a row limit: it may be suspended
    (parse(), bind(), describe(), execute(), execute(), SYNC),  # two Executes
    (bind(), execute(), execute(), SYNC),
    (parse(), bind(), execute(), describe(), SYNC),  # something after the Execute
    (bind(), execute(), FLUSH),  # a Flush, not a Sync: the answers may not end
    (parse(), bind(), describe(), describe(), execute(), SYNC),
    (parse(), bind(), describe(), execute()),  # no Sync
    (parse(), bind(), describe(), SYNC),  # no Execute
    (parse(), describe(), execute(), SYNC),  # no Bind
    (bind(), parse(), execute(), SYNC),
    (parse(), parse(), bind(), execute(), SYNC),
    (bind(), SYNC),
    (SYNC, bind(), execute(), SYNC),
]


@pytest.mark.parametrize("single_run", [frontend._single_run, frontend.single_run],
                         ids=["python", "in use"])
def test_the_runs_drivers_send(single_run) -> None:  # type: ignore[no-untyped-def]
    for messages, names in RUNS:
        assert single_run(frames(*messages)) == names, messages
    for messages in NEAR_MISSES:
        assert single_run(frames(*messages)) is None, messages


@pytest.mark.parametrize("single_run", [frontend._single_run, frontend.single_run],
                         ids=["python", "in use"])
def test_names_that_are_not_terminated_utf8(single_run) -> None:  # type: ignore[no-untyped-def]
    run = frames(parse(), bind(), describe(), execute(), SYNC)
    unterminated_portal = [run[0], (ord("B"), b"p"), *run[2:]]
    unterminated_statement = [run[0], (ord("B"), b"\0s"), *run[2:]]
    unterminated_parse = [(ord("P"), b"s1x"), *frames(bind("", "s1"), execute(), SYNC)]
    latin1 = [(ord("B"), b"\xe9\0\0\0\0\0\0"), (ord("E"), b"\xe9\0\0\0\0\0"), run[-1]]
    for batch in (unterminated_portal, unterminated_statement, unterminated_parse, latin1):
        assert single_run(batch) is None
    # the same bytes as UTF-8 are names
    utf8 = [(ord("B"), "é".encode() + b"\0\0\0\0\0\0"),
            (ord("E"), "é".encode() + b"\0\0\0\0\0"), run[-1]]
    assert single_run(utf8) == (None, "é", "")


# -- the compiled one against the reference ---------------------------------------------------

native = pytest.mark.skipif(
    framing._native is None,
    reason="the C module is not in use (not built: no C compiler at install; or "
           "PGWARDEN_PURE_PYTHON is set)")

# names of one length often, so that a check of lengths alone is not enough
names = st.sampled_from(["", "s1", "s2", "p1", "ü"]).map(str.encode) | st.binary(max_size=3)
messages = st.one_of(
    st.builds(lambda n: b"P" + n + b"\0" + SQL.encode() + b"\0\0\0", names),
    st.builds(lambda p, s: b"B" + p + b"\0" + s + b"\0\0\0\0\x01\0\0\0\x0242\0\0", names, names),
    st.builds(lambda k, n: b"D" + k + n + b"\0", st.sampled_from([b"P", b"S", b"X", b""]), names),
    st.builds(lambda n, limit: b"E" + n + b"\0" + limit,
              names, st.sampled_from([b"\0\0\0\0", b"\0\0\0\x0a", b"\0\0\0", b"\0\0\0\0\0"])),
    st.sampled_from([b"S", b"H"]),
    st.builds(lambda t, body: bytes([t]) + body, st.integers(0, 255), st.binary(max_size=8)),
)


@native
@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages, min_size=2, max_size=6), st.data())
def test_the_compiled_one_answers_as_the_reference(batch: list[bytes],
                                                   data: st.DataObject) -> None:
    framed = [(m[0], m[1:]) for m in batch]
    if data.draw(st.booleans()):  # now and then a run, cut or flipped somewhere
        run = frames(parse(), bind(), describe(), execute(), SYNC)
        k = data.draw(st.integers(0, len(run) - 1))
        body = run[k][1]
        cut = data.draw(st.integers(0, len(body)))
        run[k] = (run[k][0], body[:cut] + data.draw(st.binary(max_size=2)) + body[cut + 1:])
        framed = run
    assert framing._native.single_run(framed) == frontend._single_run(framed)


@native
def test_the_compiled_one_refuses_what_is_not_frames() -> None:
    with pytest.raises(TypeError):
        framing._native.single_run(tuple(frames(bind(), execute(), SYNC)))
    with pytest.raises(TypeError):
        framing._native.single_run([(ord("B"), "text"), (ord("E"), b"\0"), (ord("S"), b"")])
    # a type beyond a byte is no message type, as in the reference
    assert framing._native.single_run([(1 << 70, b""), *frames(execute(), SYNC)]) is None


# -- long_name: the compiled one against the reference ------------------------------------

# names about as long as PostgreSQL keeps (63 bytes), now and then with a NUL or cut short
near = st.integers(60, 66).flatmap(lambda k: st.binary(min_size=k, max_size=k)) | names
named = st.one_of(
    st.builds(lambda n: b"P" + n + b"\0" + SQL.encode() + b"\0\0\0", near),
    st.builds(lambda p, s: b"B" + p + b"\0" + s + b"\0\0\0\0\0\0", near, near),
    st.builds(lambda k, n: b"D" + k + n + b"\0", st.sampled_from([b"P", b"S", b""]), near),
    st.builds(lambda k, n: b"C" + k + n, st.sampled_from([b"P", b"S"]), near),
    st.builds(lambda n: b"E" + n + b"\0\0\0\0\0", near),
    st.builds(lambda n: b"E" + n, near),
    messages,
)


@native
@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(named, max_size=5))
def test_the_compiled_long_name_answers_as_the_reference(batch: list[bytes]) -> None:
    framed = [(m[0], m[1:]) for m in batch]
    assert framing._native.long_name(framed) is frontend._long_name(framed)


@native
def test_the_compiled_long_name_refuses_what_is_not_frames() -> None:
    with pytest.raises(TypeError):
        framing._native.long_name(tuple(frames(bind(), execute(), SYNC)))
    with pytest.raises(TypeError):
        framing._native.long_name([(ord("B"), "text")])
    assert framing._native.long_name([(1 << 70, b"x" * 99)]) is False
