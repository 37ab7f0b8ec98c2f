/*
 * The inner loop of `gateway.wire.framing.BackendObserver.relay`, compiled: stepping
 * over the whole messages the gateway does not look at (the rows of an unmasked
 * result), so that a large result costs no Python work per row. Optional: without it
 * the same loop runs in Python (tests/test_framing_native.py compares the two).
 *
 * skip(data, pos, table) -> pos: from `pos`, steps over every whole message whose type
 * byte `t` has table[t] == 1 (known to the protocol, not observed by the caller), and
 * returns where the first other one starts: an observed or unknown type, an invalid
 * length, a message not complete in `data`, or fewer than 5 bytes left. The Python loop
 * takes it from there, so every check and error stays in one place.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static PyObject *
skip(PyObject *module, PyObject *args)
{
    Py_buffer data, table;
    Py_ssize_t pos;

    (void)module;
    if (!PyArg_ParseTuple(args, "y*ny*:skip", &data, &pos, &table))
        return NULL;
    PyObject *result = NULL;
    if (table.len != 256 || pos < 0 || pos > data.len) {
        PyErr_SetString(PyExc_ValueError, "skip: a 256-byte table and 0 <= pos <= len(data)");
        goto done;
    }
    const unsigned char *d = (const unsigned char *)data.buf;
    const unsigned char *t = (const unsigned char *)table.buf;
    const Py_ssize_t n = data.len;
    while (n - pos >= 5 && t[d[pos]] == 1) {
        const int32_t length = (int32_t)(((uint32_t)d[pos + 1] << 24) |
                                         ((uint32_t)d[pos + 2] << 16) |
                                         ((uint32_t)d[pos + 3] << 8) | (uint32_t)d[pos + 4]);
        if (length < 4 || (Py_ssize_t)length > n - pos - 1)
            break; /* invalid, or not complete: the Python loop decides */
        pos += 1 + (Py_ssize_t)length;
    }
    result = PyLong_FromSsize_t(pos);
done:
    PyBuffer_Release(&data);
    PyBuffer_Release(&table);
    return result;
}

static PyMethodDef methods[] = {
    {"skip", skip, METH_VARARGS, "skip(data, pos, table) -> pos"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_skip",
    .m_doc = "Stepping over unobserved backend messages, compiled.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__skip(void)
{
    return PyModule_Create(&module);
}
