/*
 * The per-row loop of a masked result, compiled: `gateway.masking.rows.walk_one_column`
 * calls `walk` when this module was built, and runs its pure-Python twin otherwise.
 * Both must give the same answer for every input (tests/test_rowwalk_native.py compares
 * them on random and malformed streams).
 *
 * walk(data, pos, index, max_size, star16) walks the whole DataRow messages of `data` from
 * `pos` on and locates field `index` of each. It returns (end, rows, seen, pending):
 *   end      where the run stops: a message of another type, or one not complete yet;
 *   rows     a bytearray copy of data[pos:end];
 *   seen     how many of the located fields were not NULL;
 *   pending  (row start, row end, field start, field length) of every located field this
 *            code did not mask itself, offsets into `data`, for the Python masker.
 * With star16, a 16-byte field of ASCII digits is masked here as pan_last4 masks it:
 * twelve '*' and its last four digits.
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

static PyObject *
walk(PyObject *module, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t pos, index, max_size;
    int star16;
    PyObject *pending = NULL, *rows = NULL, *result = NULL;

    (void)module;
    if (!PyArg_ParseTuple(args, "y*nnnp:walk", &view, &pos, &index, &max_size, &star16))
        return NULL;
    const unsigned char *d = (const unsigned char *)view.buf;
    const Py_ssize_t n = view.len;
    if (pos < 0 || pos > n || index < 0 || max_size < 0) {
        PyErr_SetString(PyExc_ValueError, "walk: arguments out of range");
        goto done;
    }
    pending = PyList_New(0);
    if (pending == NULL)
        goto done;
    const Py_ssize_t first = pos;
    Py_ssize_t seen = 0;
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
        if (mlen < 10 || nfields <= index || mlen > max_size) {
            PyErr_SetString(PyExc_ValueError,
                            "a DataRow the masks do not fit, or over the size limit");
            goto done;
        }
        /* p never passes end + 1, so no sum below can overflow */
        Py_ssize_t p = pos + 7;
        for (Py_ssize_t k = 0; k < index && p <= end; k++) {
            if (end - p < 4) {
                p = end + 1;
                break;
            }
            const int32_t flen = read_i32(d + p);
            p += 4;
            if (flen > 0)
                p = (Py_ssize_t)flen > end - p ? end + 1 : p + flen;
        }
        if (p > end || end - p < 4) {
            PyErr_SetString(PyExc_ValueError, "DataRow field runs past its message");
            goto done;
        }
        const int32_t flen = read_i32(d + p);
        if (flen >= 0 && (Py_ssize_t)flen > end - p - 4) {
            PyErr_SetString(PyExc_ValueError, "DataRow field runs past its message");
            goto done;
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
    for (pos = first; pos < stop;) {
        const Py_ssize_t end = pos + 1 + (Py_ssize_t)read_i32(d + pos + 1);
        Py_ssize_t p = pos + 7;
        for (Py_ssize_t k = 0; k < index; k++) {
            const int32_t flen = read_i32(d + p);
            p += flen > 0 ? 4 + (Py_ssize_t)flen : 4;
        }
        const int32_t flen = read_i32(d + p);
        if (flen >= 0)
            seen++;
        if (star16 && flen == 16 && all_digits(d + p + 4, 16)) {
            memset(out + (p + 4 - first), '*', 12);
        } else {
            PyObject *item = Py_BuildValue("(nnni)", pos, end, p, (int)flen);
            if (item == NULL || PyList_Append(pending, item) < 0) {
                Py_XDECREF(item);
                goto done;
            }
            Py_DECREF(item);
        }
        pos = end;
    }
    result = Py_BuildValue("(nOnO)", stop, rows, seen, pending);
done:
    Py_XDECREF(rows);
    Py_XDECREF(pending);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"walk", walk, METH_VARARGS,
     "walk(data, pos, index, max_size, star16) -> (end, rows, seen, pending)"},
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
