/*
 * The per-row loop of a masked result, compiled: `gateway.masking.rows.walk_columns`
 * calls `walk` when this module was built, and runs its pure-Python twin otherwise.
 * Both must give the same answer for every input (tests/test_rowwalk_native.py compares
 * them on random and malformed streams; `make check-native` runs that under sanitizers).
 *
 * walk(data, pos, indexes, star16, max_size) walks the whole DataRow messages of `data`
 * from `pos` on and locates the fields `indexes` (ascending) of each. It returns
 * (end, rows, seen, pending):
 *   end      where the run stops: a message of another type, or one not complete yet;
 *   rows     a bytearray copy of data[pos:end];
 *   seen     per index, how many of its fields were not NULL;
 *   pending  (row start, row end, k, field start, field length) of every located field
 *            this code did not mask itself (k: its place in `indexes`), offsets into
 *            `data`, in order, for the Python maskers.
 * Where star16[k] is true, a 16-byte field of ASCII digits is masked here as pan_last4
 * masks it: twelve '*' and its last four digits.
 *
 * Every byte comes from the upstream server and is treated as hostile: each read is
 * bounds-checked against the message it belongs to; a row the masks do not fit raises
 * ValueError, and the caller ends the session (fail closed).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static int32_t
read_i32(const unsigned char *p)
{
    return (int32_t)(((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
                     ((uint32_t)p[2] << 8) | (uint32_t)p[3]);
}

static int16_t
read_i16(const unsigned char *p)
{
    return (int16_t)(((uint16_t)p[0] << 8) | (uint16_t)p[1]);
}

static int
all_digits(const unsigned char *p, Py_ssize_t len)
{
    for (Py_ssize_t i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9')
            return 0;
    }
    return 1;
}

#define MAX_MASKED 64 /* masked fields per result the compiled loop takes; more: Python */

/* The start of field `target` of the row ending at `end`, walking from field `field` at
 * `p`: -1 when a length on the way runs past the row. */
static Py_ssize_t
skip_to(const unsigned char *d, Py_ssize_t p, Py_ssize_t field, Py_ssize_t target,
        Py_ssize_t end)
{
    for (; field < target; field++) {
        if (end - p < 4)
            return -1;
        const int32_t flen = read_i32(d + p);
        p += 4;
        if (flen > 0) {
            if ((Py_ssize_t)flen > end - p)
                return -1;
            p += flen;
        }
    }
    return p;
}

static PyObject *
walk(PyObject *module, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t pos, max_size;
    PyObject *index_seq, *star_seq;
    PyObject *pending = NULL, *rows = NULL, *seen_list = NULL, *result = NULL;
    Py_ssize_t indexes[MAX_MASKED], seen[MAX_MASKED];
    int star16[MAX_MASKED];

    (void)module;
    if (!PyArg_ParseTuple(args, "y*nO!O!n:walk", &view, &pos, &PyTuple_Type, &index_seq,
                          &PyTuple_Type, &star_seq, &max_size))
        return NULL;
    const unsigned char *d = (const unsigned char *)view.buf;
    const Py_ssize_t n = view.len;
    const Py_ssize_t count = PyTuple_GET_SIZE(index_seq);
    if (pos < 0 || pos > n || max_size < 0 || count < 1 || count > MAX_MASKED ||
        PyTuple_GET_SIZE(star_seq) != count) {
        PyErr_SetString(PyExc_ValueError, "walk: arguments out of range");
        goto done;
    }
    for (Py_ssize_t k = 0; k < count; k++) {
        indexes[k] = PyLong_AsSsize_t(PyTuple_GET_ITEM(index_seq, k));
        if (indexes[k] == -1 && PyErr_Occurred())
            goto done;
        if (indexes[k] < 0 || (k && indexes[k] <= indexes[k - 1])) {
            PyErr_SetString(PyExc_ValueError, "walk: indexes must ascend from 0 up");
            goto done;
        }
        star16[k] = PyObject_IsTrue(PyTuple_GET_ITEM(star_seq, k));
        if (star16[k] < 0)
            goto done;
        seen[k] = 0;
    }
    const Py_ssize_t last = indexes[count - 1];
    pending = PyList_New(0);
    if (pending == NULL)
        goto done;
    const Py_ssize_t first = pos;
    /* Pass 1 finds the run's end and checks every row; pass 2 copies and masks. */
    while (n - pos >= 11) { /* 11: the shortest DataRow with a field */
        if (d[pos] != 'D')
            break;
        const int32_t mlen = read_i32(d + pos + 1);
        const Py_ssize_t end = pos + 1 + (Py_ssize_t)mlen;
        if (end > n) {
            if (mlen > max_size) {
                PyErr_SetString(PyExc_ValueError, "DataRow with an invalid length");
                goto done;
            }
            break; /* incomplete: the caller holds it for the next read */
        }
        const int16_t nfields = read_i16(d + pos + 5);
        if (mlen < 10 || nfields <= last || mlen > max_size) {
            PyErr_SetString(PyExc_ValueError,
                            "a DataRow the masks do not fit, or over the size limit");
            goto done;
        }
        Py_ssize_t p = pos + 7, field = 0;
        for (Py_ssize_t k = 0; k < count; k++) {
            p = skip_to(d, p, field, indexes[k], end);
            if (p < 0 || end - p < 4) {
                PyErr_SetString(PyExc_ValueError, "DataRow field runs past its message");
                goto done;
            }
            const int32_t flen = read_i32(d + p);
            p += 4;
            if (flen > 0) {
                if ((Py_ssize_t)flen > end - p) {
                    PyErr_SetString(PyExc_ValueError, "DataRow field runs past its message");
                    goto done;
                }
                p += flen;
            }
            field = indexes[k] + 1;
        }
        pos = end;
    }
    if (n - pos < 11 && n - pos >= 5 && d[pos] == 'D') {
        const int32_t mlen = read_i32(d + pos + 1);
        if (pos + 1 + (Py_ssize_t)mlen <= n || mlen > max_size) {
            PyErr_SetString(PyExc_ValueError,
                            "a DataRow the masks do not fit, or over the size limit");
            goto done;
        }
    }
    const Py_ssize_t stop = pos;
    rows = PyByteArray_FromStringAndSize((const char *)d + first, stop - first);
    if (rows == NULL)
        goto done;
    unsigned char *out = (unsigned char *)PyByteArray_AS_STRING(rows);
    /* Every offset below was checked in pass 1. */
    for (pos = first; pos < stop;) {
        const Py_ssize_t end = pos + 1 + (Py_ssize_t)read_i32(d + pos + 1);
        Py_ssize_t p = pos + 7, field = 0;
        for (Py_ssize_t k = 0; k < count; k++) {
            p = skip_to(d, p, field, indexes[k], end);
            const int32_t flen = read_i32(d + p);
            if (flen >= 0)
                seen[k]++;
            if (star16[k] && flen == 16 && all_digits(d + p + 4, 16)) {
                memset(out + (p + 4 - first), '*', 12);
            } else {
                PyObject *item = Py_BuildValue("(nnnni)", pos, end, k, p, (int)flen);
                if (item == NULL || PyList_Append(pending, item) < 0) {
                    Py_XDECREF(item);
                    goto done;
                }
                Py_DECREF(item);
            }
            p += flen > 0 ? 4 + (Py_ssize_t)flen : 4;
            field = indexes[k] + 1;
        }
        pos = end;
    }
    seen_list = PyList_New(count);
    if (seen_list == NULL)
        goto done;
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *v = PyLong_FromSsize_t(seen[k]);
        if (v == NULL)
            goto done;
        PyList_SET_ITEM(seen_list, k, v);
    }
    result = Py_BuildValue("(nOOO)", stop, rows, seen_list, pending);
done:
    Py_XDECREF(rows);
    Py_XDECREF(pending);
    Py_XDECREF(seen_list);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"walk", walk, METH_VARARGS,
     "walk(data, pos, indexes, star16, max_size) -> (end, rows, seen, pending)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_rowwalk",
    .m_doc = "The masked-result row loop, compiled.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__rowwalk(void)
{
    return PyModule_Create(&module);
}
