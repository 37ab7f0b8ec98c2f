/*
 * The shape of a statement text, compiled, for the texts clients send most: plain
 * ASCII with identifiers, keywords, operators, integers, decimals and simple quoted
 * strings. `gateway.enforce.shapes.shape_of` lexes with pglast, whose scan builds a
 * Python token object per token (~7 µs for pgbench's statement); this is ~0.3 µs.
 *
 * shape(sql) -> (key, first, last, redacted) | None
 *   first, last: where the statement's own text lies (a final ';' and blanks outside)
 *   key:      sql[first:last] with every constant replaced by "\x01" + its kind ('i'
 *             ICONST, 'f' FCONST, 's' SCONST): equal keys mean equal statements but for
 *             the values of constants (whitespace inside included), so one analysis
 *             stands for both
 *   redacted: sql[first:last] with the constants replaced by $1, $2, ... in order
 * None whenever the text holds anything outside that subset: a comment, a '$' (a
 * parameter or a dollar quote), a backslash, E'' / B'' / X'' / N'' / U&'' prefixes, a
 * string followed by another (a continuation), numbers with exponents, underscores or
 * bases, a '.' before a digit, non-ASCII or control characters, an unterminated quote,
 * text after a ';', or no token at all. The caller then takes the pglast path, which is
 * the reference: tests/test_shape_native.py checks on random texts that whenever this
 * returns a shape, pglast finds exactly these constants (same spans and kinds) and
 * shape_of gives the same span and redacted text.
 *
 * kept(body, table, protocol) -> table.get((key, protocol)) | None
 *   the same key made from a Query message's body (the text and its final NUL), looked
 *   up in one call: the gate's kept allows by shape, for a statement repeated with other
 *   values (pgbench, ORMs). None too for any body the Python path must read itself (no
 *   final NUL, a NUL inside, a byte outside ASCII), so every error stays there.
 *
 * Assumes standard_conforming_strings = on (a backslash in '...' is a character), as the
 * gateway does: a session that turns it off is refused before any statement is read.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* A bulk INSERT of a few MB has hundreds of thousands of constants: pglast's lexer takes
 * ~0.5 s per MB of them (a Python object per token), holding the event loop its session
 * shares; here they cost milliseconds. The bound keeps the spans' memory (24 bytes each)
 * below what pglast's tokens of the same text would take; past it, pglast. */
#define MAX_CONSTANTS (1 << 20)

typedef struct {
    Py_ssize_t start, end; /* [start, end) in the text */
    char kind;
} span_t;

static int
is_ident_start(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static int
is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static int
is_blank(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Operator and punctuation characters that need no lookahead beyond the checks below. */
static int
is_punct(unsigned char c)
{
    return c != 0 && strchr(",()[]:+-*/%^<>=~!@#&|`?.;", c) != NULL;
}

/* From the opening quote `q` at s[i], where its closing quote is (`q` doubled inside
 * stands for itself); -1 when there is none or a control character comes first. */
static Py_ssize_t
closing_quote(const unsigned char *s, Py_ssize_t n, Py_ssize_t i, unsigned char q)
{
    Py_ssize_t j = i + 1;
    while (j < n) {
        const unsigned char d = s[j];
        if ((d < 0x20 && !is_blank(d)) || d == 0x7f)
            return -1;
        if (d == q) {
            if (j + 1 < n && s[j + 1] == q) {
                j += 2;
                continue;
            }
            return j;
        }
        j++;
    }
    return -1;
}

/* 'i' when the digits fit int32 as PostgreSQL reads them, else 'f' (it makes them a
 * numeric constant). */
static char
integer_kind(const unsigned char *s, Py_ssize_t n)
{
    int64_t v = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        v = v * 10 + (s[i] - '0');
        if (v > INT32_MAX)
            return 'f';
    }
    return 'i';
}

/* The spans of a text's constants, in a caller's buffer that grows on the heap. */
typedef struct {
    span_t *spans;
    Py_ssize_t n, cap;
    span_t stack[64];
} spans_t;

static void
spans_init(spans_t *sp)
{
    sp->spans = sp->stack;
    sp->n = 0;
    sp->cap = 64;
}

static void
spans_free(spans_t *sp)
{
    if (sp->spans != sp->stack)
        PyMem_Free(sp->spans);
}

/* Lexes s[0:n] (plain ASCII) into its constants' spans and the statement's own extent
 * [first, last): 1, or 0 to decline (anything outside the plain subset), or -1 with a
 * Python error set. */
static int
lex(const unsigned char *s, Py_ssize_t n, spans_t *sp, Py_ssize_t *first_p,
    Py_ssize_t *last_p)
{
    Py_ssize_t first = -1, last = -1, i = 0;
    int after_semicolon = 0;

#define BAIL return 0
#define TOKEN(a, b)          \
    do {                     \
        if (first < 0)       \
            first = (a);     \
        last = (b);          \
    } while (0)
#define CONSTANT(a, b, k)                                                          \
    do {                                                                           \
        if (sp->n == sp->cap) {                                                    \
            if (sp->cap >= MAX_CONSTANTS)                                          \
                BAIL;                                                              \
            span_t *grown = PyMem_Malloc(sizeof(span_t) * (size_t)sp->cap * 2);    \
            if (grown == NULL) {                                                   \
                PyErr_NoMemory();                                                  \
                return -1;                                                         \
            }                                                                      \
            memcpy(grown, sp->spans, sizeof(span_t) * (size_t)sp->n);              \
            if (sp->spans != sp->stack)                                            \
                PyMem_Free(sp->spans);                                             \
            sp->spans = grown;                                                     \
            sp->cap *= 2;                                                          \
        }                                                                          \
        sp->spans[sp->n].start = (a);                                              \
        sp->spans[sp->n].end = (b);                                                \
        sp->spans[sp->n].kind = (k);                                               \
        sp->n++;                                                                   \
        TOKEN(a, b);                                                               \
    } while (0)

    while (i < n) {
        const unsigned char c = s[i];
        if (is_blank(c)) {
            i++;
            continue;
        }
        if (after_semicolon)
            BAIL; /* a second statement, or a second ';': pglast decides */
        if (is_ident_start(c)) {
            Py_ssize_t j = i + 1;
            while (j < n && (is_ident_start(s[j]) || is_digit(s[j])))
                j++;
            /* '$' continues an identifier in PostgreSQL; a quote right after a word
             * may be a prefix (E'', B'', X'', N''): leave both to pglast */
            if (j < n && (s[j] == '$' || s[j] == '\'' || s[j] == '"'))
                BAIL;
            TOKEN(i, j);
            i = j;
        } else if (is_digit(c)) {
            Py_ssize_t j = i + 1;
            while (j < n && is_digit(s[j]))
                j++;
            char kind;
            if (j < n && s[j] == '.') {
                Py_ssize_t k = j + 1;
                while (k < n && is_digit(s[k]))
                    k++;
                if (k == j + 1)
                    BAIL; /* "1." or "1..2" */
                kind = 'f';
                j = k;
            } else {
                kind = integer_kind(s + i, j - i);
            }
            /* exponents, bases (0x), underscores, junk after a number, a second '.' */
            if (j < n && (is_ident_start(s[j]) || s[j] == '$' || s[j] == '.'))
                BAIL;
            CONSTANT(i, j, kind);
            i = j;
        } else if (c == '\'') {
            Py_ssize_t j = closing_quote(s, n, i, '\'');
            if (j < 0)
                BAIL;
            j++; /* past the closing quote */
            Py_ssize_t k = j;
            while (k < n && is_blank(s[k]))
                k++;
            if (k < n && s[k] == '\'')
                BAIL; /* 'a' 'b': PostgreSQL may join them (a continuation) */
            CONSTANT(i, j, 's');
            i = j;
        } else if (c == '"') {
            Py_ssize_t j = closing_quote(s, n, i, '"');
            if (j < 0 || j == i + 1)
                BAIL; /* unterminated, or "" (an error in PostgreSQL) */
            j++;
            if (j < n && (s[j] == '\'' || s[j] == '"'))
                BAIL;
            TOKEN(i, j);
            i = j;
        } else if (is_punct(c)) {
            const unsigned char d = i + 1 < n ? s[i + 1] : 0;
            if ((c == '-' && d == '-') || (c == '/' && d == '*'))
                BAIL; /* a comment */
            if (c == '.' && is_digit(d))
                BAIL; /* ".5" */
            if (c == '&' && (d == '\'' || d == '"'))
                BAIL; /* U&'...' */
            if (c == ';') {
                after_semicolon = 1;
            } else {
                TOKEN(i, i + 1);
            }
            i++;
        } else {
            BAIL; /* '$', '\\', '{', '}', control characters */
        }
    }
    if (first < 0)
        BAIL;
    *first_p = first;
    *last_p = last;
    return 1;
#undef BAIL
#undef TOKEN
#undef CONSTANT
}

/* lex() into `sp` (initialised here; the caller frees it with spans_free): 1 to go on,
 * or 0 with *result set to what the caller returns (None when the text is declined,
 * NULL with a Python error set). */
static int
lex_into(const unsigned char *s, Py_ssize_t n, spans_t *sp, Py_ssize_t *first,
         Py_ssize_t *last, PyObject **result)
{
    spans_init(sp);
    const int lexed = lex(s, n, sp, first, last);
    if (lexed <= 0)
        *result = lexed == 0 ? Py_NewRef(Py_None) : NULL;
    return lexed > 0;
}

/* The key of s[first:last] with constants `sp`: the text with each constant as
 * "\x01" + its kind. */
static PyObject *
make_key(const unsigned char *s, const spans_t *sp, Py_ssize_t first, Py_ssize_t last)
{
    Py_ssize_t key_len = last - first;
    for (Py_ssize_t k = 0; k < sp->n; k++)
        key_len -= sp->spans[k].end - sp->spans[k].start - 2;
    PyObject *key = PyUnicode_New(key_len, 127);
    if (key == NULL)
        return NULL;
    char *kw = (char *)PyUnicode_DATA(key);
    Py_ssize_t pos = first;
    for (Py_ssize_t k = 0; k < sp->n; k++) {
        memcpy(kw, s + pos, (size_t)(sp->spans[k].start - pos));
        kw += sp->spans[k].start - pos;
        *kw++ = '\x01';
        *kw++ = sp->spans[k].kind;
        pos = sp->spans[k].end;
    }
    memcpy(kw, s + pos, (size_t)(last - pos));
    return key;
}

static PyObject *
shape(PyObject *module, PyObject *arg)
{
    (void)module;
    if (!PyUnicode_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "shape: sql must be str");
        return NULL;
    }
    if (!PyUnicode_IS_ASCII(arg))
        Py_RETURN_NONE;
    const unsigned char *s = (const unsigned char *)PyUnicode_DATA(arg);
    const Py_ssize_t n = PyUnicode_GET_LENGTH(arg);

    spans_t sp;
    Py_ssize_t first, last;
    PyObject *result = NULL;
    if (!lex_into(s, n, &sp, &first, &last, &result))
        goto done;

    /* redacted: the statement's own text with the constants as $1, $2, ... */
    Py_ssize_t red_len = last - first;
    for (Py_ssize_t k = 0; k < sp.n; k++) {
        char digits[24];
        red_len -= sp.spans[k].end - sp.spans[k].start;
        red_len += snprintf(digits, sizeof digits, "$%zd", k + 1);
    }
    PyObject *key = make_key(s, &sp, first, last);
    PyObject *redacted = key ? PyUnicode_New(red_len, 127) : NULL;
    if (redacted == NULL) {
        Py_XDECREF(key);
        goto done;
    }
    char *rw = (char *)PyUnicode_DATA(redacted);
    Py_ssize_t rpos = first;
    for (Py_ssize_t k = 0; k < sp.n; k++) {
        memcpy(rw, s + rpos, (size_t)(sp.spans[k].start - rpos));
        rw += sp.spans[k].start - rpos;
        char digits[24];
        const int nd = snprintf(digits, sizeof digits, "$%zd", k + 1);
        memcpy(rw, digits, (size_t)nd);
        rw += nd;
        rpos = sp.spans[k].end;
    }
    memcpy(rw, s + rpos, (size_t)(last - rpos));
    result = Py_BuildValue("(NnnN)", key, first, last, redacted);
done:
    spans_free(&sp);
    return result;
}

/* kept(body, table, protocol) -> table[(key, protocol)] | None
 *
 * A Query message's body (its text and the terminating NUL, nothing after it) looked
 * up by the text's shape key, as `table.get((shape(text)[0], protocol))` would for the
 * text `body[:-1]`; None as well for any body the Python path must read itself: no
 * final NUL, a NUL inside, a byte outside ASCII, or a text shape() declines. */
static PyObject *
kept(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *table, *protocol;
    const unsigned char *s;
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "y#O!U:kept", &s, &size, &PyDict_Type, &table, &protocol))
        return NULL;
    if (size < 1 || s[size - 1] != 0)
        Py_RETURN_NONE;
    const Py_ssize_t n = size - 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (s[i] == 0 || s[i] >= 0x80) /* the Python path reads those (and errs) */
            Py_RETURN_NONE;
    }
    spans_t sp;
    Py_ssize_t first, last;
    PyObject *result = NULL;
    if (!lex_into(s, n, &sp, &first, &last, &result))
        goto done;
    PyObject *key = make_key(s, &sp, first, last);
    if (key == NULL)
        goto done;
    PyObject *pair = PyTuple_Pack(2, key, protocol);
    Py_DECREF(key);
    if (pair == NULL)
        goto done;
    PyObject *found = PyDict_GetItemWithError(table, pair);
    Py_DECREF(pair);
    if (found != NULL)
        result = Py_NewRef(found);
    else if (!PyErr_Occurred())
        result = Py_NewRef(Py_None);
done:
    spans_free(&sp);
    return result;
}

static PyMethodDef methods[] = {
    {"shape", shape, METH_O, "shape(sql) -> (key, first, last, redacted) | None"},
    {"kept", kept, METH_VARARGS,
     "kept(body, table, protocol) -> table.get((shape(body[:-1])[0], protocol))"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_shape",
    .m_doc = "The shape of a plain statement text, compiled.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__shape(void)
{
    return PyModule_Create(&module);
}
