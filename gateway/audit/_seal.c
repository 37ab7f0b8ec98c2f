/*
 * Sealing a templated audit record, compiled: `gateway.audit.chain.Chain.seal_template`
 * filled the template's holes, hashed the result onto the chain and appended the hash
 * member in Python, ~3.7 µs per record and two records per statement. This does the
 * same three steps in one call. Optional: without it the Python path runs, and
 * tests/test_seal_native.py holds the two to the same bytes.
 *
 * seal(chunks, picks, seq, prev, ts, values, sha256) -> (line, digest, ts) | None
 *   chunks: the template's canonical text around its holes (bytes, one more than holes)
 *   picks:  for each hole in text order, its index into (seq, prev, ts, *values)
 *   prev, ts: ASCII str, written quoted; seq and values: see hole_value() in template.py
 *   ts None: now, as canonical.now_ts() writes it (RFC 3339, UTC, microseconds): its
 *   two Python calls and a strftime cache cost a third of the rest of the seal
 *   sha256: hashlib.sha256, or None: OpenSSL's SHA-256 called here, from the libcrypto
 *   that hashlib already loaded (the module's `openssl_sha256` is True when it was
 *   found). Both are the same OpenSSL digest; the direct call skips a hash object, its
 *   method call and a copy of its state, a third of a cold seal.
 * Returns None, before anything is hashed, when a value is not one a hole can hold, a
 * pick has no value (too few values), or prev/ts is not ASCII: the caller takes the
 * Python path, which names the problem.
 * The line is body[:-1] + ',"hash":"' + digest + '"}\n' with digest = sha256(prev+body).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define INT_LIMIT 1000000000000LL /* 10**12: a hole holds at most 12 digits, short of a PAN */
#define MAX_ARGS 64
#define NUM_MAX 16 /* room for 12 digits, or "false" */

typedef struct {
    const char *data;
    Py_ssize_t len;
    char num[NUM_MAX];
} arg_t;

/* An integer in [low, 10**12) written as decimal digits. 1 on success, 0 when it is not. */
static int
int_arg(PyObject *v, long long low, arg_t *a)
{
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (x == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (overflow || x < low || x >= INT_LIMIT)
        return 0;
    a->len = snprintf(a->num, NUM_MAX, "%lld", x);
    a->data = a->num;
    return 1;
}

static int
value_arg(PyObject *v, arg_t *a)
{
    if (PyLong_CheckExact(v))
        return int_arg(v, 0, a);
    if (v == Py_None) {
        a->data = "null";
        a->len = 4;
    } else if (v == Py_True) {
        a->data = "true";
        a->len = 4;
    } else if (v == Py_False) {
        a->data = "false";
        a->len = 5;
    } else {
        return 0;
    }
    return 1;
}

/* A quoted ASCII str (prev, ts): the quotes are written around it. */
static int
text_arg(PyObject *v, arg_t *a)
{
    if (!PyUnicode_Check(v) || !PyUnicode_IS_ASCII(v))
        return 0;
    a->data = (const char *)PyUnicode_DATA(v);
    a->len = PyUnicode_GET_LENGTH(v);
    return 1;
}

/* OpenSSL's SHA-256 block functions (SHA256_Init/Update/Final, whose ABI has not changed
 * since 0.9.8), from a libcrypto the process has loaded already, never a new one: unset
 * when hashlib's OpenSSL is linked statically or named otherwise. Not SHA256(): since
 * 3.0 it looks the algorithm up by name on every call. */
typedef int (*sha_init_fn)(void *);
typedef int (*sha_update_fn)(void *, const void *, size_t);
typedef int (*sha_final_fn)(unsigned char *, void *);
static sha_init_fn sha_init = NULL;
static sha_update_fn sha_update = NULL;
static sha_final_fn sha_final = NULL;
#define SHA_CTX_ROOM 256 /* SHA256_CTX is 112 bytes */

static int
openssl_sha256(const char *data, size_t len, unsigned char md[32])
{
    _Alignas(16) unsigned char ctx[SHA_CTX_ROOM];
    return sha_init(ctx) == 1 && sha_update(ctx, data, len) == 1 && sha_final(md, ctx) == 1;
}

static void
find_openssl_sha256(void)
{
    static const char *const names[] = {"libcrypto.so.3", "libcrypto.so.1.1", NULL};
    for (int i = 0; names[i] != NULL; i++) {
        void *lib = dlopen(names[i], RTLD_NOW | RTLD_NOLOAD);
        if (lib == NULL)
            continue;
        void *init = dlsym(lib, "SHA256_Init"), *update = dlsym(lib, "SHA256_Update"),
             *final = dlsym(lib, "SHA256_Final");
        if (init != NULL && update != NULL && final != NULL) {
            /* (memcpy: ISO C has no cast between object and function pointers) */
            memcpy(&sha_init, &init, sizeof init);
            memcpy(&sha_update, &update, sizeof update);
            memcpy(&sha_final, &final, sizeof final);
            return; /* the library stays open: the pointers must outlive this call */
        }
        dlclose(lib);
    }
}

#define TS_LEN 27 /* 2025-01-15T09:30:00.123456Z */
#define TS_ROOM 64 /* what snprintf may write for any int fields */
#define TS_SECONDS 19 /* 2025-01-15T09:30:00: the part that changes once a second */

/* The time now as canonical.now_ts() writes it, into buf (TS_ROOM bytes): 1, or 0 with
 * a Python error set. The date and time of day are formatted once per second (the GIL
 * guards the cache); only the microseconds are written every call. */
static int
now_ts(char *buf)
{
    static time_t cached_sec = -1;
    static char cached[TS_ROOM];
    struct timespec t;
    if (clock_gettime(CLOCK_REALTIME, &t) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return 0;
    }
    const time_t sec = t.tv_sec;
    if (sec != cached_sec) {
        struct tm tm;
        if (gmtime_r(&sec, &tm) == NULL || tm.tm_year + 1900 > 9999 ||
                tm.tm_year + 1900 < 1000) {
            PyErr_SetString(PyExc_OverflowError, "seal: the clock is outside years 1000-9999");
            return 0;
        }
        const int n = snprintf(cached, TS_ROOM, "%04d-%02d-%02dT%02d:%02d:%02d",
                               tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                               tm.tm_min, tm.tm_sec);
        if (n != TS_SECONDS) {
            PyErr_SetString(PyExc_OverflowError, "seal: the clock gave an unwritable time");
            return 0;
        }
        cached_sec = sec;
    }
    memcpy(buf, cached, TS_SECONDS);
    long us = (long)(t.tv_nsec / 1000); /* 0..999999 */
    buf[TS_SECONDS] = '.';
    for (int i = TS_LEN - 2; i > TS_SECONDS; i--) {
        buf[i] = (char)('0' + us % 10);
        us /= 10;
    }
    buf[TS_LEN - 1] = 'Z';
    return 1;
}

static PyObject *
seal(PyObject *module, PyObject *args)
{
    PyObject *chunks, *picks, *seq, *prev, *ts, *values, *sha256;
    arg_t vals[MAX_ARGS];
    int quoted[MAX_ARGS];
    Py_ssize_t ks[MAX_ARGS];

    (void)module;
    if (!PyArg_ParseTuple(args, "O!O!OOOO!O:seal", &PyTuple_Type, &chunks, &PyTuple_Type,
                          &picks, &seq, &prev, &ts, &PyTuple_Type, &values, &sha256))
        return NULL;
    const Py_ssize_t nholes = PyTuple_GET_SIZE(picks);
    const Py_ssize_t nvalues = PyTuple_GET_SIZE(values);
    if (PyTuple_GET_SIZE(chunks) != nholes + 1 || nholes > MAX_ARGS ||
            3 + nvalues > MAX_ARGS) {
        PyErr_SetString(PyExc_ValueError, "seal: one chunk more than holes, at most 64 holes");
        return NULL;
    }
    if (!PyLong_CheckExact(seq) || !int_arg(seq, 1, &vals[0]))
        Py_RETURN_NONE; /* seq must be in (0, 10**12) */
    char stamp[TS_ROOM];
    if (ts == Py_None) {
        if (!now_ts(stamp))
            return NULL;
        vals[2].data = stamp;
        vals[2].len = TS_LEN;
    } else if (!text_arg(ts, &vals[2])) {
        Py_RETURN_NONE;
    }
    if (!text_arg(prev, &vals[1]))
        Py_RETURN_NONE;
    quoted[0] = 0;
    quoted[1] = quoted[2] = 1;
    for (Py_ssize_t i = 0; i < nvalues; i++) {
        if (!value_arg(PyTuple_GET_ITEM(values, i), &vals[3 + i]))
            Py_RETURN_NONE;
        quoted[3 + i] = 0;
    }

    /* The body's size, with every pick checked before anything is written. */
    Py_ssize_t size = 0;
    for (Py_ssize_t i = 0; i <= nholes; i++) {
        PyObject *c = PyTuple_GET_ITEM(chunks, i);
        if (!PyBytes_Check(c)) {
            PyErr_SetString(PyExc_TypeError, "seal: chunks must be bytes");
            return NULL;
        }
        size += PyBytes_GET_SIZE(c);
        if (i == nholes)
            break;
        PyObject *p = PyTuple_GET_ITEM(picks, i);
        if (!PyLong_Check(p)) {
            PyErr_SetString(PyExc_TypeError, "seal: picks must be integers");
            return NULL;
        }
        const Py_ssize_t k = PyLong_AsSsize_t(p);
        if (k < 0 || k >= 3 + nvalues) { /* e.g. fewer values than the template has holes */
            PyErr_Clear();
            Py_RETURN_NONE;
        }
        ks[i] = k;
        size += vals[k].len + 2 * quoted[k];
    }
    if (size < 1) {
        PyErr_SetString(PyExc_ValueError, "seal: an empty record");
        return NULL;
    }

    /* prev + body, contiguous: the hash input. */
    const Py_ssize_t plen = vals[1].len;
    PyObject *input = PyBytes_FromStringAndSize(NULL, plen + size);
    if (input == NULL)
        return NULL;
    char *w = PyBytes_AS_STRING(input);
    memcpy(w, vals[1].data, (size_t)plen);
    w += plen;
    for (Py_ssize_t i = 0; i <= nholes; i++) {
        PyObject *c = PyTuple_GET_ITEM(chunks, i);
        memcpy(w, PyBytes_AS_STRING(c), (size_t)PyBytes_GET_SIZE(c));
        w += PyBytes_GET_SIZE(c);
        if (i == nholes)
            break;
        const Py_ssize_t k = ks[i];
        if (quoted[k])
            *w++ = '"';
        memcpy(w, vals[k].data, (size_t)vals[k].len);
        w += vals[k].len;
        if (quoted[k])
            *w++ = '"';
    }

    PyObject *result = NULL, *hasher = NULL, *digest = NULL, *line = NULL;
    if (sha256 == Py_None) {
        static const char hex[] = "0123456789abcdef";
        unsigned char md[32];
        char text[64];
        if (sha_init == NULL) {
            PyErr_SetString(PyExc_ValueError, "seal: no OpenSSL SHA-256 in this process");
            goto done;
        }
        if (!openssl_sha256(PyBytes_AS_STRING(input), (size_t)(plen + size), md)) {
            PyErr_SetString(PyExc_ValueError, "seal: OpenSSL's SHA-256 failed");
            goto done;
        }
        for (int i = 0; i < 32; i++) {
            text[2 * i] = hex[md[i] >> 4];
            text[2 * i + 1] = hex[md[i] & 15];
        }
        digest = PyUnicode_FromStringAndSize(text, 64);
        if (digest == NULL)
            goto done;
    } else {
        hasher = PyObject_CallOneArg(sha256, input);
        if (hasher == NULL)
            goto done;
        digest = PyObject_CallMethod(hasher, "hexdigest", NULL);
        if (digest == NULL)
            goto done;
    }
    if (!PyUnicode_Check(digest) || !PyUnicode_IS_ASCII(digest)) {
        PyErr_SetString(PyExc_TypeError, "seal: sha256 gave no ASCII hex digest");
        goto done;
    }
    static const char head[] = ",\"hash\":\"";
    static const char tail[] = "\"}\n";
    const Py_ssize_t dlen = PyUnicode_GET_LENGTH(digest);
    const Py_ssize_t hl = (Py_ssize_t)sizeof head - 1, tl = (Py_ssize_t)sizeof tail - 1;
    line = PyBytes_FromStringAndSize(NULL, size - 1 + hl + dlen + tl);
    if (line == NULL)
        goto done;
    w = PyBytes_AS_STRING(line);
    memcpy(w, PyBytes_AS_STRING(input) + plen, (size_t)(size - 1)); /* the body but its '}' */
    w += size - 1;
    memcpy(w, head, (size_t)hl);
    w += hl;
    memcpy(w, PyUnicode_DATA(digest), (size_t)dlen);
    w += dlen;
    memcpy(w, tail, (size_t)tl);
    if (ts == Py_None) {
        PyObject *now = PyUnicode_FromStringAndSize(stamp, TS_LEN);
        if (now != NULL)
            result = PyTuple_Pack(3, line, digest, now);
        Py_XDECREF(now);
    } else {
        result = PyTuple_Pack(3, line, digest, ts);
    }
done:
    Py_DECREF(input);
    Py_XDECREF(hasher);
    Py_XDECREF(digest);
    Py_XDECREF(line);
    return result;
}

static PyMethodDef methods[] = {
    {"seal", seal, METH_VARARGS,
     "seal(chunks, picks, seq, prev, ts, values, sha256) -> (line, digest, ts) | None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_seal",
    .m_doc = "Sealing a templated audit record, compiled.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__seal(void)
{
    /* hashlib's OpenSSL, loaded if it is not yet: the only libcrypto this module uses */
    PyObject *hashlib = PyImport_ImportModule("_hashlib");
    if (hashlib == NULL)
        PyErr_Clear();
    Py_XDECREF(hashlib);
    if (sha_init == NULL)
        find_openssl_sha256();
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddObjectRef(m, "openssl_sha256",
                                           sha_init != NULL ? Py_True : Py_False) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
