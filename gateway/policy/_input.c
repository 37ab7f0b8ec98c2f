/*
 * Handing an input document to rego-cpp, compiled. `gateway.policy.runtime.build_input`
 * walks the document in Python and makes one ctypes call per node: ~110 calls for a
 * statement's document, and a ctypes call costs more than the node it adds. This walks
 * it in C and calls rego-cpp's C API through the function pointers runtime.py passes in
 * (the ones regopy's own bindings load: no link-time dependency on librego_shared).
 * Optional: without it the Python walk runs, and tests/test_policy_input_native.py holds
 * the two to the same input, term for term.
 *
 * bind(addresses): once, the addresses of regoInputInt, regoInputFloat, regoInputString,
 *   regoInputBoolean, regoInputNull, regoInputObjectItem, regoInputObject, regoInputArray.
 * build(p, value, memo, plan, quote) -> bool
 *   p:     the regoInput* (an int) from regoNewInput
 *   memo:  KeyOrder's plans by key tuple; plan: KeyOrder.plan (computes and memoizes one)
 *   quote: runtime._quoted, for a string that must go over as its JSON literal
 * Objects go over in the plan's key order, strings as their UTF-8 text unless they hold
 * '"', '\\' or a control character (then as quote() gives them), exactly as the walk in
 * Python does. True: the whole value was handed over. False, as soon as anything is not
 * plainly JSON (a type that is not exactly dict, list, tuple, str, int, float, bool or
 * None, an integer outside int64, a non-finite float, a string UTF-8 cannot encode,
 * nesting deeper than MAX_DEPTH) or a rego call fails: the caller frees p and builds the
 * input with the Python walk, which raises the error that names the problem. Exceptions
 * raised by plan() or quote() propagate.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>

#define MAX_DEPTH 64

typedef unsigned int (*in_int_t)(void *, long long);
typedef unsigned int (*in_float_t)(void *, double);
typedef unsigned int (*in_str_t)(void *, const char *);
typedef unsigned int (*in_bool_t)(void *, unsigned char);
typedef unsigned int (*in_void_t)(void *);
typedef unsigned int (*in_size_t)(void *, unsigned int);

static in_int_t in_int;
static in_float_t in_float;
static in_str_t in_str;
static in_bool_t in_bool;
static in_void_t in_null, in_item;
static in_size_t in_object, in_array;

/* Outcomes of add(): DONE, LEFT (the Python walk takes over), FAILED (an exception). */
enum { DONE = 0, LEFT = 1, FAILED = -1 };

typedef struct {
    void *p;
    PyObject *memo, *plan, *quote;
} walk_t;

/* 1 when s must go over as its JSON literal (what runtime._NEEDS_ESCAPE matches). */
static int
needs_escape(const char *s, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == '"' || c == '\\')
            return 1;
    }
    return 0;
}

static int
add_str(walk_t *w, PyObject *v)
{
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(v, &n);
    if (s == NULL) { /* lone surrogates: the Python walk raises its own error */
        PyErr_Clear();
        return LEFT;
    }
    if (!needs_escape(s, n))
        return in_str(w->p, s) ? LEFT : DONE;
    PyObject *b = PyObject_CallOneArg(w->quote, v);
    if (b == NULL)
        return FAILED;
    int rc = LEFT;
    if (PyBytes_CheckExact(b))
        rc = in_str(w->p, PyBytes_AS_STRING(b)) ? LEFT : DONE;
    Py_DECREF(b);
    return rc;
}

static int add(walk_t *w, PyObject *v, int depth);

static int
add_dict(walk_t *w, PyObject *v, int depth)
{
    Py_ssize_t n = PyDict_GET_SIZE(v), pos = 0, i = 0;
    PyObject *key, *value;
    if (n > (Py_ssize_t)UINT_MAX)
        return LEFT;
    PyObject *keys = PyTuple_New(n);
    if (keys == NULL)
        return FAILED;
    while (PyDict_Next(v, &pos, &key, &value)) {
        if (i == n) { /* cannot happen while we hold the GIL; stay in bounds anyway */
            Py_DECREF(keys);
            return LEFT;
        }
        Py_INCREF(key);
        PyTuple_SET_ITEM(keys, i++, key);
    }
    PyObject *plan = PyDict_GetItemWithError(w->memo, keys);
    Py_DECREF(keys);
    if (plan != NULL)
        Py_INCREF(plan);
    else if (PyErr_Occurred())
        return FAILED;
    else if ((plan = PyObject_CallOneArg(w->plan, v)) == NULL)
        return FAILED;
    int rc = DONE;
    if (!PyTuple_CheckExact(plan) || PyTuple_GET_SIZE(plan) != n) {
        rc = LEFT;
        goto done;
    }
    for (i = 0; i < n && rc == DONE; i++) {
        PyObject *entry = PyTuple_GET_ITEM(plan, i);
        if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 2
                || !PyBytes_CheckExact(PyTuple_GET_ITEM(entry, 1))) {
            rc = LEFT;
            break;
        }
        PyObject *item = PyDict_GetItemWithError(v, PyTuple_GET_ITEM(entry, 0));
        if (item == NULL) {
            rc = PyErr_Occurred() ? FAILED : LEFT;
            break;
        }
        if (in_str(w->p, PyBytes_AS_STRING(PyTuple_GET_ITEM(entry, 1)))) {
            rc = LEFT;
            break;
        }
        Py_INCREF(item);
        rc = add(w, item, depth + 1);
        Py_DECREF(item);
        if (rc == DONE && in_item(w->p))
            rc = LEFT;
    }
    if (rc == DONE && in_object(w->p, (unsigned int)n))
        rc = LEFT;
done:
    Py_DECREF(plan);
    return rc;
}

static int
add_items(walk_t *w, PyObject *v, int depth)
{
    Py_ssize_t n = PySequence_Fast_GET_SIZE(v);
    if (n > (Py_ssize_t)UINT_MAX)
        return LEFT;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i >= PySequence_Fast_GET_SIZE(v)) /* a list cannot shrink under us; be sure */
            return LEFT;
        PyObject *item = PySequence_Fast_GET_ITEM(v, i);
        Py_INCREF(item);
        int rc = add(w, item, depth + 1);
        Py_DECREF(item);
        if (rc != DONE)
            return rc;
    }
    return in_array(w->p, (unsigned int)n) ? LEFT : DONE;
}

static int
add(walk_t *w, PyObject *v, int depth)
{
    if (depth > MAX_DEPTH)
        return LEFT;
    if (PyUnicode_CheckExact(v))
        return add_str(w, v);
    if (PyDict_CheckExact(v))
        return add_dict(w, v, depth);
    if (PyList_CheckExact(v) || PyTuple_CheckExact(v))
        return add_items(w, v, depth);
    if (v == Py_True || v == Py_False)
        return in_bool(w->p, v == Py_True) ? LEFT : DONE;
    if (v == Py_None)
        return in_null(w->p) ? LEFT : DONE;
    if (PyLong_CheckExact(v)) {
        int overflow = 0;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow || (x == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return LEFT;
        }
        return in_int(w->p, x) ? LEFT : DONE;
    }
    if (PyFloat_CheckExact(v)) {
        double x = PyFloat_AS_DOUBLE(v);
        if (!isfinite(x))
            return LEFT;
        return in_float(w->p, x) ? LEFT : DONE;
    }
    return LEFT;
}

static PyObject *
bind(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *addresses;
    void *f[8];
    if (!PyArg_ParseTuple(args, "O!", &PyTuple_Type, &addresses))
        return NULL;
    if (PyTuple_GET_SIZE(addresses) != 8) {
        PyErr_SetString(PyExc_ValueError, "bind() takes the addresses of 8 functions");
        return NULL;
    }
    for (int i = 0; i < 8; i++) {
        f[i] = PyLong_AsVoidPtr(PyTuple_GET_ITEM(addresses, i));
        if (f[i] == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "a function address is NULL");
            return NULL;
        }
    }
    in_int = (in_int_t)f[0];
    in_float = (in_float_t)f[1];
    in_str = (in_str_t)f[2];
    in_bool = (in_bool_t)f[3];
    in_null = (in_void_t)f[4];
    in_item = (in_void_t)f[5];
    in_object = (in_size_t)f[6];
    in_array = (in_size_t)f[7];
    Py_RETURN_NONE;
}

static PyObject *
build(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *p, *value;
    walk_t w;
    if (!PyArg_ParseTuple(args, "OOO!OO", &p, &value, &PyDict_Type, &w.memo, &w.plan,
                          &w.quote))
        return NULL;
    if (in_array == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bind() has not been called");
        return NULL;
    }
    w.p = PyLong_AsVoidPtr(p);
    if (w.p == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "the input is NULL");
        return NULL;
    }
    int rc = add(&w, value, 0);
    if (rc == FAILED)
        return NULL;
    return PyBool_FromLong(rc == DONE);
}

static PyMethodDef methods[] = {
    {"bind", bind, METH_VARARGS, "bind(addresses): the rego C API functions build() calls"},
    {"build", build, METH_VARARGS, "build(p, value, memo, plan, quote) -> bool"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_input",
    .m_doc = "Handing an input document to rego-cpp, compiled.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__input(void)
{
    return PyModule_Create(&module);
}
