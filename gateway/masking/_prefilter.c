/*
 * The safety net's prefilter for a buffer on the way to the client, compiled: whether
 * `StreamScanner.feed` may return it as it is (gateway/masking/safety_net.py). The
 * Python twin classifies every byte (bytes.translate), searches the class string for
 * the two shapes every PAN hit contains and looks at the tail; this is the same
 * question in one pass with no copy (tests/test_safety_net_native.py compares them).
 *
 * quiet(chunk) -> bool: True when `chunk` holds neither shape — 13 ASCII digits in a
 * row, or 4 digits, a space or dash, 4 digits — and does not end in an open run (a
 * digit, or a space or dash right after a digit), so no hit can start in it and
 * continue in the next chunk.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define PAN_MIN 13
#define GROUP 4

static inline int
is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static inline int
is_separator(unsigned char c)
{
    return c == ' ' || c == '-';
}

static PyObject *
quiet(PyObject *module, PyObject *arg)
{
    (void)module;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *d = (const unsigned char *)view.buf;
    const Py_ssize_t n = view.len;
    Py_ssize_t run = 0;       /* digits in a row, up to here */
    int grouped = 0;          /* the run began right after 4 digits and one separator */
    int found = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const unsigned char c = d[i];
        if (is_digit(c)) {
            run++;
            if (run >= PAN_MIN || (grouped && run >= GROUP)) {
                found = 1;
                break;
            }
        } else {
            grouped = is_separator(c) && run >= GROUP;
            run = 0;
        }
    }
    int open = 0;
    if (!found && n > 0) {
        const unsigned char last = d[n - 1];
        open = is_digit(last) || (is_separator(last) && n >= 2 && is_digit(d[n - 2]));
    }
    PyBuffer_Release(&view);
    return PyBool_FromLong(!found && !open);
}

static PyMethodDef methods[] = {
    {"quiet", quiet, METH_O, "quiet(chunk) -> bool"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_prefilter",
    .m_doc = "The safety net's prefilter for an outgoing buffer, compiled.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__prefilter(void)
{
    return PyModule_Create(&module);
}
