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
 * scan(data, pos, table, max_size, events) -> pos: from `pos`, for each whole message
 * whose type byte `t` has
 *   table[t] == 1 (known to the protocol, not observed): steps over it;
 *   table[t] == 2 (observed, not coalesced), length <= max_size: appends the event
 *       (t, body, start, end) to the list `events` and steps over it;
 * and returns where the first other one starts: an unknown or coalesced type
 * (table[t] 0 or 3), an invalid or oversized length, a message not complete in `data`,
 * or fewer than 5 bytes left.
 *
 * `MessageFramer.feed`: cutting a client's whole messages out of a buffer.
 *
 * frames(data, pos, allowed, max_size, frames) -> pos: from `pos`, for each whole
 * message whose type byte `t` has allowed[t] == 1 and a length from 4 to max_size,
 * appends (t, body) to the list `frames` and steps over it; returns where the first
 * other one starts (a type not allowed, a bad or oversized length, a message not
 * complete in `data`, or fewer than 5 bytes left).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

enum { UNKNOWN = 0, SKIPPED = 1, OBSERVED = 2 };

static inline int32_t
length_at(const unsigned char *d, Py_ssize_t pos)
{
    return (int32_t)(((uint32_t)d[pos + 1] << 24) | ((uint32_t)d[pos + 2] << 16) |
                     ((uint32_t)d[pos + 3] << 8) | (uint32_t)d[pos + 4]);
}

/* Both loops take (data: bytes, pos, table: 256 bytes, max_size, out: list). */
typedef struct {
    const unsigned char *data, *table;
    Py_ssize_t n, pos, max_size;
    PyObject *out;
} Args;

static int
parse(const char *name, PyObject *const *args, Py_ssize_t nargs, Args *a)
{
    if (nargs != 5) {
        PyErr_Format(PyExc_TypeError, "%s(data, pos, table, max_size, out) takes 5 arguments",
                     name);
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
    if (parse("scan", args, nargs, &a) < 0)
        return NULL;
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
            PyObject *event = Py_BuildValue("(iy#nn)", (int)d[pos],
                                            (const char *)d + pos + 5, end - pos - 5,
                                            pos, end);
            if (event == NULL)
                return NULL;
            int failed = PyList_Append(events, event);
            Py_DECREF(event);
            if (failed)
                return NULL;
        }
        pos = end;
    }
    return PyLong_FromSsize_t(pos);
}

static PyObject *
frames(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    Args p;
    if (parse("frames", args, nargs, &p) < 0)
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

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "scan(data, pos, table, max_size, events) -> pos"},
    {"frames", (PyCFunction)(void (*)(void))frames, METH_FASTCALL,
     "frames(data, pos, allowed, max_size, frames) -> pos"},
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
