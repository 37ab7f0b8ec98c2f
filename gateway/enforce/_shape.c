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
 * Assumes standard_conforming_strings = on (a backslash in '...' is a character), as the
 * gateway does: a session that turns it off is refused before any statement is read.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_CONSTANTS 4096

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

    span_t stack_spans[64];
    span_t *spans = stack_spans;
    Py_ssize_t nspans = 0, cap = 64;
    Py_ssize_t first = -1, last = -1, i = 0;
    int after_semicolon = 0;
    PyObject *result = NULL;

#define BAIL goto decline
#define TOKEN(a, b)          \
    do {                     \
        if (first < 0)       \
            first = (a);     \
        last = (b);          \
    } while (0)
#define CONSTANT(a, b, k)                                                          \
    do {                                                                           \
        if (nspans == cap) {                                                       \
            if (cap >= MAX_CONSTANTS)                                              \
                BAIL;                                                              \
            span_t *grown = PyMem_Malloc(sizeof(span_t) * (size_t)cap * 2);        \
            if (grown == NULL) {                                                   \
                PyErr_NoMemory();                                                  \
                goto fail;                                                         \
            }                                                                      \
            memcpy(grown, spans, sizeof(span_t) * (size_t)nspans);                 \
            if (spans != stack_spans)                                              \
                PyMem_Free(spans);                                                 \
            spans = grown;                                                         \
            cap *= 2;                                                              \
        }                                                                          \
        spans[nspans].start = (a);                                                 \
        spans[nspans].end = (b);                                                   \
        spans[nspans].kind = (k);                                                  \
        nspans++;                                                                  \
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

    /* key: the statement's own text with constants as \x01 + kind */
    Py_ssize_t key_len = last - first, red_len = last - first;
    for (Py_ssize_t k = 0; k < nspans; k++) {
        key_len -= spans[k].end - spans[k].start - 2;
        char digits[24];
        red_len -= spans[k].end - spans[k].start;
        red_len += snprintf(digits, sizeof digits, "$%zd", k + 1);
    }
    PyObject *key = PyUnicode_New(key_len, 127);
    PyObject *redacted = key ? PyUnicode_New(red_len, 127) : NULL;
    if (redacted == NULL) {
        Py_XDECREF(key);
        goto fail;
    }
    char *kw = (char *)PyUnicode_DATA(key);
    char *rw = (char *)PyUnicode_DATA(redacted);
    Py_ssize_t pos = first, rpos = first;
    for (Py_ssize_t k = 0; k < nspans; k++) {
        memcpy(kw, s + pos, (size_t)(spans[k].start - pos));
        kw += spans[k].start - pos;
        *kw++ = '\x01';
        *kw++ = spans[k].kind;
        pos = spans[k].end;
        memcpy(rw, s + rpos, (size_t)(spans[k].start - rpos));
        rw += spans[k].start - rpos;
        char digits[24];
        const int nd = snprintf(digits, sizeof digits, "$%zd", k + 1);
        memcpy(rw, digits, (size_t)nd);
        rw += nd;
        rpos = spans[k].end;
    }
    memcpy(kw, s + pos, (size_t)(last - pos));
    memcpy(rw, s + rpos, (size_t)(last - rpos));
    result = Py_BuildValue("(NnnN)", key, first, last, redacted);
    goto done;

decline:
    result = Py_NewRef(Py_None);
    goto done;
fail:
    result = NULL;
done:
    if (spans != stack_spans)
        PyMem_Free(spans);
    return result;
#undef BAIL
#undef TOKEN
#undef CONSTANT
}

static PyMethodDef methods[] = {
    {"shape", shape, METH_O, "shape(sql) -> (key, first, last, redacted) | None"},
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
