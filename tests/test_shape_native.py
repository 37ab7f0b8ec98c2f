"""The compiled shape of a plain statement text (`gateway/enforce/_shape.c`) against
pglast's lexer, which `shapes.lexed_shape_of` uses and which is the reference.

Whenever the C function returns a shape, pglast must lex the same text and find exactly
the same constants (spans and kinds), nothing else of note (no comment, parameter or
other kind of constant), and `lexed_shape_of` must give the same span and redacted text.
That is what makes sharing an analysis between two texts of one C key safe: equal keys
mean equal text outside constants that pglast also reads as constants. Texts come from
random characters, from fragments chosen to sit on the lexer's edges, and from real
statements with random values.
"""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pglast import parser as pg

from gateway.audit.redact import COMMENTS, CONSTANTS, PARAM
from gateway.enforce import shapes
from gateway.enforce.shapes import lexed_shape_of

pytestmark = pytest.mark.skipif(
    shapes._native is None,
    reason="the C shape is not in use (not built: no C compiler at install; or "
           "PGWARDEN_PURE_PYTHON is set)")

EXAMPLES = int(os.environ.get("PGWARDEN_NATIVE_EXAMPLES", "300")) * 3
KINDS = {"ICONST": "i", "FCONST": "f", "SCONST": "s"}

FRAGMENTS = [
    "SELECT", "select", "a", "t1", "x$", "E", "e", "B", "X", "N", "U", "u", "_", "FROM",
    "WHERE", "LIMIT", "1", "0", "007", "42", "2147483647", "2147483648", "99999999999999",
    "1.5", "1.", ".5", "1..2", "1e5", "1E+5", "0x1F", "0o7", "0b1", "1_000", "'x'", "''",
    "'it''s'", "'a\\'", "'", "'\n'", "\"Q\"", "\"\"", "\"a\"\"b\"", "\"", "&", "U&'x'",
    "$1", "$$", "$tag$", "--", "-- c\n", "/*", "*/", "/* c */", ";", "::", ":", ".", ",",
    "(", ")", "[", "]", "=", "<>", "!=", "<=", "-", "+", "*", "/", "%", "^", "~", "@", "#",
    "|", "`", "?", "{", "}", "\\", " ", "  ", "\n", "\t", "\r", "\f", "\v", "\x00", "\x7f",
    "é", "\u00a0", "\u2028",
]
fragment_texts = st.lists(st.sampled_from(FRAGMENTS), max_size=14).map("".join)
spaced_texts = st.lists(st.sampled_from(FRAGMENTS), max_size=10).map(" ".join)
char_texts = st.text(alphabet=st.sampled_from(list("aeEuU_x1 09.'\"$-/*;&:\n\t\\é\f")),
                     max_size=30)
literal = st.one_of(st.integers(0, 10**20).map(str), st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=12).map(
    lambda s: "'" + s.replace("'", "''") + "'"),
    st.tuples(st.integers(0, 999), st.integers(0, 999)).map(lambda t: f"{t[0]}.{t[1]}"))
# texts for the lexer, never run
statements = st.builds(
    lambda a, b, c: f"SELECT abalance, {a} FROM pgbench_accounts WHERE aid = {b} "  # noqa: S608
                    f"AND note <> {c};",
    literal, literal, literal)


def pglast_key(sql: str) -> str | None:
    """The C key's form built from pglast's tokens; None for anything the C function
    must have declined (a comment, a parameter, another constant kind, no lex)."""
    try:
        tokens = pg.scan(sql)
    except Exception:
        return None
    if tokens and tokens[-1].name == "ASCII_59":  # a final ';' is not the statement's
        tokens = tokens[:-1]
    if not tokens:
        return None
    out, pos = [], tokens[0].start
    for tok in tokens:
        if tok.name in COMMENTS or tok.name == PARAM or tok.name == "ASCII_59":
            return None
        if tok.name in CONSTANTS:
            if tok.name not in KINDS:
                return None
            out.append(sql[pos:tok.start] + "\x01" + KINDS[tok.name])
            pos = tok.end + 1
    return "".join(out) + sql[pos : tokens[-1].end + 1]


def check(sql: str) -> None:
    assert shapes._native is not None
    got = shapes._native.shape(sql)
    if got is None:
        return
    key, first, last, redacted = got
    assert pglast_key(sql) == key, sql
    reference = lexed_shape_of(sql)
    assert reference is not None, sql
    assert (reference.span, reference.redacted) == ((first, last), redacted), sql


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(fragment_texts, spaced_texts, char_texts, statements))
def test_a_c_shape_is_what_pglast_reads(sql: str) -> None:
    check(sql)


@pytest.mark.parametrize("sql", [
    "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
    "select 'it''s', 1.5, 2147483647, 2147483648 from t1 where x <> -3",
    "  UPDATE t SET a = 'x' WHERE id = 7 ;  ",
    'SELECT "Weird ""name""" FROM "T" WHERE v = 0',
    "SELECT a::int, b[1], c FROM t WHERE d >= 10.25",
])
def test_plain_statements_take_the_c_path(sql: str) -> None:
    assert shapes._native is not None
    assert shapes._native.shape(sql) is not None
    check(sql)


@pytest.mark.parametrize("sql", [
    "", "  ", ";", "SELECT 1; SELECT 2", "SELECT 1;;", "SELECT 1 -- c", "SELECT /* c */ 1",
    "SELECT $1", "SELECT $$x$$", "SELECT E'a'", "SELECT B'1'", "SELECT X'1F'", "SELECT N'a'",
    "SELECT U&'a'", "SELECT 'a'\n'b'", "SELECT 1e5", "SELECT 0x1F", "SELECT 1_000",
    "SELECT .5", "SELECT 1.", "SELECT 1..2", "SELECT 'open", 'SELECT "open', 'SELECT ""',
    "SELECT 'é'", "SELECT 1\f", "SELECT a\\b", "SELECT x$y", "SELECT {1}",
])
def test_anything_outside_the_plain_subset_goes_to_pglast(sql: str) -> None:
    assert shapes._native is not None
    assert shapes._native.shape(sql) is None
    assert fields(shapes.shape_of(sql)) == fields(lexed_shape_of(sql))


def fields(shape: shapes.Shape | None) -> tuple[object, ...] | None:
    return None if shape is None else (shape.key, shape.span, shape.redacted)


def test_texts_differing_only_in_constants_share_a_key() -> None:
    assert shapes._native is not None
    a = shapes.shape_of("  SELECT * FROM t WHERE id = 5 AND name = 'x' ;")
    b = shapes.shape_of("SELECT * FROM t WHERE id = 600 AND name = 'a longer one'")
    c = shapes.shape_of("SELECT * FROM t WHERE id = 5.5 AND name = 'x'")
    assert a is not None and b is not None and c is not None
    assert a.key == b.key != c.key
    assert a.redacted == b.redacted == "SELECT * FROM t WHERE id = $1 AND name = $2"
    assert a.key == "SELECT * FROM t WHERE id = \x01i AND name = \x01s"


def test_a_non_string_argument_raises() -> None:
    assert shapes._native is not None
    with pytest.raises(TypeError):
        shapes._native.shape(b"SELECT 1")


def corpus() -> list[str]:
    """Every statement of the analyzer's table and of the masking bypass corpus."""
    from test_masking_bypass import TECHNIQUES
    from test_sql_analysis import CASES

    texts = [c.sql for c in CASES] + [s for t in TECHNIQUES for s in t.steps]
    return sorted(set(texts))


def test_the_test_corpora_agree_with_pglast() -> None:
    texts = corpus()
    shaped = 0
    for sql in texts:
        for variant in (sql, re.sub(r"\d", "7", sql), re.sub(r"\d+", "12345678901", sql)):
            check(variant)
        shaped += shapes._native.shape(sql) is not None  # type: ignore[union-attr]
    assert len(texts) > 300 and shaped > len(texts) // 2  # the C path is what is tested


@pytest.mark.parametrize("n", [63, 64, 65, 200, 4096, 4097, 100_000])
def test_many_constants(n: int) -> None:
    # past the first 64 the spans move to the heap (and grow there)
    sql = "SELECT * FROM t WHERE id IN (" + ", ".join(map(str, range(n))) + ")"  # noqa: S608
    assert shapes._native is not None
    got = shapes._native.shape(sql)
    assert got is not None
    check(sql)
    assert got[3].endswith(f"${n})") and got[0].count("\x01i") == n


def test_a_bulk_insert_is_shaped_in_c_up_to_its_bound() -> None:
    """A bulk INSERT's constants are found by the C pass, pglast's all the same, up to
    MAX_CONSTANTS (1 << 20); past it the text goes to pglast."""
    assert shapes._native is not None
    rows = ",".join(f"({i}, 'n{i}', {i}.5)" for i in range(20_000))
    sql = "INSERT INTO t (a, b, c) VALUES " + rows  # noqa: S608
    got = shapes._native.shape(sql)
    assert got is not None and got[0].count("\x01") == 60_000
    check(sql)
    limit = 1 << 20
    at = "SELECT * FROM t WHERE id IN (" + ",".join("1" * limit) + ")"  # noqa: S608
    assert shapes._native.shape(at) is not None
    assert shapes._native.shape(at[:-1] + ",1)") is None


def query_body(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass") + b"\0"


def check_kept(text: str, body: bytes) -> None:
    """`kept` finds what the Python path would find for the body's text by its shape,
    and declines (None) whatever that path must read itself."""
    assert shapes._native is not None
    plain = text.isascii() and "\0" not in text and body == query_body(text)
    got = shapes._native.shape(text) if plain else None
    decoy = ("\0 never a key: the lexer declines a NUL", "simple")
    table: dict[object, object] = {decoy: "decoy"}
    if got is not None:
        table[(got[0], "simple")] = "hit"
        table[(got[0], "extended")] = "other protocol"
    expected = "hit" if got is not None else None
    assert shapes._native.kept(body, table, "simple") == expected, (text, body)
    assert shapes._native.kept(body, {decoy: "decoy"}, "simple") is None, (text, body)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(fragment_texts, spaced_texts, char_texts, statements))
def test_kept_looks_a_query_body_up_by_its_shape(sql: str) -> None:
    check_kept(sql, query_body(sql))


@pytest.mark.parametrize("body", [
    b"", b"\0", b"SELECT 1", b"SELECT ", b"SELECT 1\0\0", b"SELECT\0 1\0",
    b"SELECT 'caf\xc3\xa9'\0", b"SELECT '\xff'\0", b"SELECT 1;\0", b"SELECT 'x'\0",
    b"SELECT 1; SELECT 2\0",
])
def test_kept_declines_what_the_python_path_reads(body: bytes) -> None:
    """No final NUL, a NUL inside, bytes outside ASCII (valid UTF-8 or not), or a text
    the compiled lexer declines: None, so query_text gives its error or the full path
    looks, even when the table holds the key such a body might be mistaken for."""
    assert shapes._native is not None
    table = {(key, "simple"): "hit" for key in ("SELECT", "SELECT \x01i", "SELECT \x01s")}
    plain = body.endswith(b"\0") and b"\0" not in body[:-1] and body.isascii() \
        and shapes._native.shape(body[:-1].decode()) is not None
    assert shapes._native.kept(body, table, "simple") == ("hit" if plain else None)
    assert plain == (body in (b"SELECT 1;\0", b"SELECT 'x'\0"))


def test_kept_raises_on_wrong_arguments() -> None:
    assert shapes._native is not None
    with pytest.raises(TypeError):
        shapes._native.kept("SELECT 1\0", {}, "simple")
    with pytest.raises(TypeError):
        shapes._native.kept(b"SELECT 1\0", [], "simple")
    with pytest.raises(TypeError):  # the protocol is a str
        shapes._native.kept(b"SELECT 1\0", {}, ["simple"])
