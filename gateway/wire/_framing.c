/*
 * The inner loops of `gateway.wire.framing`, compiled. Optional: without this module
 * the same loops run in Python (tests/test_framing_native.py compares the two). Each
 * stops at anything unusual and returns where it stopped; the Python loop takes it
 * from there, so every check, error and partial message stays in one place.
 *
 * `BackendObserver.relay`: stepping over the whole messages the gateway does not look
 * at (the rows of an unmasked result), so that a large result costs no Python work per
 * row, and cutting out the small ones it does look at (ReadyForQuery, CommandComplete,
 * ...), so that an ordinary answer costs one call.
 *
 * scan(data, pos, table, max_size, events, rows) -> (pos, rows): from `pos`, for each
 * whole message whose type byte `t` has
 *   table[t] == 1 (known to the protocol, not observed): steps over it, adding 1 to
 *       `rows` if it is a row: a DataRow ('D') or a CopyData ('d', a row of COPY TO);
 *   table[t] == 2 (observed, not coalesced), length <= max_size: appends the event
 *       (t, body, start, end, rows + 1 if it is a row else rows) to the list
 *       `events`, steps over it and starts `rows` from 0 again;
 * and returns where the first other one starts (an unknown or coalesced type
 * (table[t] 0 or 3), an invalid or oversized length, a message not complete in `data`,
 * or fewer than 5 bytes left) and the rows stepped over after the last event.
 *
 * `MessageFramer.feed`: cutting a client's whole messages out of a buffer.
 *
 * frames(data, pos, allowed, max_size, frames) -> pos: from `pos`, for each whole
 * message whose type byte `t` has allowed[t] == 1 and a length from 4 to max_size,
 * appends (t, body) to the list `frames` and steps over it; returns where the first
 * other one starts (a type not allowed, a bad or oversized length, a message not
 * complete in `data`, or fewer than 5 bytes left).
 *
 * `gateway.wire.frontend.single_run`: whether a batch of client messages is a driver's
 * extended-protocol run of one statement, and its names.
 *
 * single_run(frames) -> (name or None, portal, statement) or None, `frames` a list of
 * (type, body) as `frames` cuts them: the Python `_single_run` is its reference, and
 * says what it checks.
 *
 * `gateway.wire.frontend.long_name`: whether a batch names a statement or portal longer
 * than PostgreSQL keeps (once per extended-protocol batch, prepared executions included).
 *
 * long_name(frames) -> bool, `frames` as above: the Python `_long_name` is its reference.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { UNKNOWN = 0, SKIPPED = 1, OBSERVED = 2 };
#define DATA_ROW 'D'
#define COPY_DATA 'd'

/* The messages an event's count counts: a result's rows, and a COPY TO's (the server
 * sends one CopyData per row; in binary the header rides with the first). */
static inline int
is_row(unsigned char t)
{
    return t == DATA_ROW || t == COPY_DATA;
}

static inline int32_t
length_at(const unsigned char *d, Py_ssize_t pos)
{
    return (int32_t)(((uint32_t)d[pos + 1] << 24) | ((uint32_t)d[pos + 2] << 16) |
                     ((uint32_t)d[pos + 3] << 8) | (uint32_t)d[pos + 4]);
}

/* Both loops take (data: bytes, pos, table: 256 bytes, max_size, out: list), and
 * scan a count besides. */
typedef struct {
    const unsigned char *data, *table;
    Py_ssize_t n, pos, max_size;
    PyObject *out;
} Args;

static int
parse(const char *name, PyObject *const *args, Py_ssize_t nargs, Py_ssize_t expected,
      Args *a)
{
    if (nargs != expected) {
        PyErr_Format(PyExc_TypeError, "%s takes %zd arguments", name, expected);
        return -1;
    }
    if (!PyBytes_CheckExact(args[0]) || !PyBytes_CheckExact(args[2]) ||
        !PyList_CheckExact(args[4])) {
        PyErr_Format(PyExc_TypeError, "%s: data and table are bytes, out a list", name);
        return -1;
    }
    a->pos = PyLong_AsSsize_t(args[1]);
    if (a->pos == -1 && PyErr_Occurred())
        return -1;
    a->max_size = PyLong_AsSsize_t(args[3]);
    if (a->max_size == -1 && PyErr_Occurred())
        return -1;
    a->n = PyBytes_GET_SIZE(args[0]);
    if (PyBytes_GET_SIZE(args[2]) != 256 || a->pos < 0 || a->pos > a->n) {
        PyErr_Format(PyExc_ValueError, "%s: a 256-byte table and 0 <= pos <= len(data)", name);
        return -1;
    }
    a->data = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    a->table = (const unsigned char *)PyBytes_AS_STRING(args[2]);
    a->out = args[4];
    return 0;
}

static PyObject *
scan(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    Args a;
    if (parse("scan", args, nargs, 6, &a) < 0)
        return NULL;
    Py_ssize_t rows = PyLong_AsSsize_t(args[5]);
    if (rows == -1 && PyErr_Occurred())
        return NULL;
    if (rows < 0) {
        PyErr_SetString(PyExc_ValueError, "scan: rows >= 0");
        return NULL;
    }
    const unsigned char *d = a.data, *t = a.table;
    const Py_ssize_t n = a.n, max_size = a.max_size;
    PyObject *events = a.out;
    Py_ssize_t pos = a.pos;
    while (n - pos >= 5) {
        const unsigned char kind = t[d[pos]];
        if (kind != SKIPPED && kind != OBSERVED)
            break;
        const int32_t length = length_at(d, pos);
        if (length < 4 || (Py_ssize_t)length > n - pos - 1)
            break; /* invalid, or not complete: the Python loop decides */
        const Py_ssize_t end = pos + 1 + (Py_ssize_t)length;
        if (kind == OBSERVED) {
            if ((Py_ssize_t)length > max_size)
                break;
            PyObject *event = Py_BuildValue("(iy#nnn)", (int)d[pos],
                                            (const char *)d + pos + 5, end - pos - 5,
                                            pos, end, rows + is_row(d[pos]));
            if (event == NULL)
                return NULL;
            int failed = PyList_Append(events, event);
            Py_DECREF(event);
            if (failed)
                return NULL;
            rows = 0;
        } else if (is_row(d[pos])) {
            rows++;
        }
        pos = end;
    }
    return Py_BuildValue("(nn)", pos, rows);
}

static PyObject *
frames(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    Args p;
    if (parse("frames", args, nargs, 5, &p) < 0)
        return NULL;
    const unsigned char *d = p.data, *a = p.table;
    const Py_ssize_t n = p.n, max_size = p.max_size;
    PyObject *out = p.out;
    Py_ssize_t pos = p.pos;
    while (n - pos >= 5 && a[d[pos]] == 1) {
        const int32_t length = length_at(d, pos);
        if (length < 4 || (Py_ssize_t)length > max_size || (Py_ssize_t)length > n - pos - 1)
            break;
        const Py_ssize_t end = pos + 1 + (Py_ssize_t)length;
        PyObject *frame = Py_BuildValue("(iy#)", (int)d[pos], (const char *)d + pos + 5,
                                        end - pos - 5);
        if (frame == NULL)
            return NULL;
        int failed = PyList_Append(out, frame);
        Py_DECREF(frame);
        if (failed)
            return NULL;
        pos = end;
    }
    return PyLong_FromSsize_t(pos);
}

/* frames[k] as (type, body, length); a type beyond a byte is -1, like no type. */
static int
frame_at(PyObject *frames, Py_ssize_t k, int *type, const char **body, Py_ssize_t *len)
{
    PyObject *item = PyList_GET_ITEM(frames, k);
    if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2 ||
        !PyLong_CheckExact(PyTuple_GET_ITEM(item, 0)) ||
        !PyBytes_CheckExact(PyTuple_GET_ITEM(item, 1))) {
        PyErr_SetString(PyExc_TypeError, "frames are (type: int, body: bytes)");
        return -1;
    }
    int overflow;
    const long t = PyLong_AsLongAndOverflow(PyTuple_GET_ITEM(item, 0), &overflow);
    *type = overflow || t < 0 || t > 255 ? -1 : (int)t;
    *body = PyBytes_AS_STRING(PyTuple_GET_ITEM(item, 1));
    *len = PyBytes_GET_SIZE(PyTuple_GET_ITEM(item, 1));
    return 0;
}

static PyObject *
single_run(PyObject *module, PyObject *frames)
{
    (void)module;
    if (!PyList_CheckExact(frames)) {
        PyErr_SetString(PyExc_TypeError, "single_run(frames: list)");
        return NULL;
    }
    const Py_ssize_t n = PyList_GET_SIZE(frames);
    if (n < 3 || n > 5)
        Py_RETURN_NONE;
    int type[5];
    const char *body[5];
    Py_ssize_t len[5];
    for (Py_ssize_t k = 0; k < n; k++)
        if (frame_at(frames, k, &type[k], &body[k], &len[k]) < 0)
            return NULL;
    if (type[n - 1] != 'S')
        Py_RETURN_NONE;
    const int parsed = type[0] == 'P';
    Py_ssize_t name_len = 0, i = parsed ? 1 : 0; /* i: the Bind */
    if (parsed) {
        const char *z = memchr(body[0], 0, (size_t)len[0]);
        if (z == NULL)
            Py_RETURN_NONE;
        name_len = z - body[0];
    }
    if (type[i] != 'B')
        Py_RETURN_NONE;
    const char *b = body[i];
    const Py_ssize_t bl = len[i];
    const char *pz = memchr(b, 0, (size_t)bl);
    if (pz == NULL)
        Py_RETURN_NONE;
    const Py_ssize_t p = pz - b; /* the portal's end; the statement is b[p + 1, s) */
    const char *sz = memchr(b + p + 1, 0, (size_t)(bl - p - 1));
    if (sz == NULL)
        Py_RETURN_NONE;
    const Py_ssize_t s = sz - b;
    if (parsed && (s - p - 1 != name_len || memcmp(b + p + 1, body[0], (size_t)name_len) != 0))
        Py_RETURN_NONE;
    if (type[i + 1] == 'D') { /* of the portal or of the statement, byte for byte */
        const char *d = body[i + 1];
        const Py_ssize_t dl = len[i + 1];
        const int portal = dl == p + 2 && d[0] == 'P' && memcmp(d + 1, b, (size_t)p + 1) == 0;
        const int statement = dl == s - p + 1 && d[0] == 'S' &&
                              memcmp(d + 1, b + p + 1, (size_t)(s - p)) == 0;
        if (!portal && !statement)
            Py_RETURN_NONE;
        i++;
    }
    /* the Execute, last before the Sync: of the portal, with no row limit */
    if (i + 2 != n - 1 || type[i + 1] != 'E' || len[i + 1] != p + 5 ||
        memcmp(body[i + 1], b, (size_t)p) != 0 || memcmp(body[i + 1] + p, "\0\0\0\0\0", 5) != 0)
        Py_RETURN_NONE;
    PyObject *names = PyTuple_New(3);
    if (names == NULL)
        return NULL;
    PyObject *portal = PyUnicode_DecodeUTF8(b, p, NULL);
    PyTuple_SET_ITEM(names, 1, portal);
    PyObject *statement = portal == NULL ? NULL : PyUnicode_DecodeUTF8(b + p + 1, s - p - 1, NULL);
    PyTuple_SET_ITEM(names, 2, statement);
    if (statement == NULL) {
        Py_DECREF(names);
        if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
            return NULL;
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    PyTuple_SET_ITEM(names, 0, Py_NewRef(parsed ? statement : Py_None));
    return names;
}

#define MAX_NAME 63 /* NAMEDATALEN - 1 */

/* The offset of the first NUL in b[from, len), or -1 (as bytes.find(b"\0", from)). */
static Py_ssize_t
nul_from(const char *b, Py_ssize_t len, Py_ssize_t from)
{
    if (from >= len)
        return -1;
    const char *z = memchr(b + from, 0, (size_t)(len - from));
    return z == NULL ? -1 : z - b;
}

static PyObject *
long_name(PyObject *module, PyObject *frames)
{
    (void)module;
    if (!PyList_CheckExact(frames)) {
        PyErr_SetString(PyExc_TypeError, "long_name(frames: list)");
        return NULL;
    }
    const Py_ssize_t n = PyList_GET_SIZE(frames);
    for (Py_ssize_t k = 0; k < n; k++) {
        int t;
        const char *b;
        Py_ssize_t len;
        if (frame_at(frames, k, &t, &b, &len) < 0)
            return NULL;
        if (t == 'B') { /* portal, then statement */
            const Py_ssize_t p = nul_from(b, len, 0);
            if (p > MAX_NAME || (p >= 0 && nul_from(b, len, p + 1) - p - 1 > MAX_NAME))
                Py_RETURN_TRUE;
        } else if (t == 'E' || t == 'P') {
            if (nul_from(b, len, 0) > MAX_NAME)
                Py_RETURN_TRUE;
        } else if ((t == 'D' || t == 'C') && nul_from(b, len, 1) > MAX_NAME + 1) {
            Py_RETURN_TRUE;
        }
    }
    Py_RETURN_FALSE;
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "scan(data, pos, table, max_size, events, rows) -> (pos, rows)"},
    {"frames", (PyCFunction)(void (*)(void))frames, METH_FASTCALL,
     "frames(data, pos, allowed, max_size, frames) -> pos"},
    {"single_run", (PyCFunction)single_run, METH_O,
     "single_run(frames) -> (name or None, portal, statement) or None"},
    {"long_name", (PyCFunction)long_name, METH_O,
     "long_name(frames) -> whether a message names a statement or portal past 63 bytes"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_framing",
    .m_doc = "The message loops of gateway.wire.framing, compiled.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__framing(void)
{
    return PyModule_Create(&module);
}
