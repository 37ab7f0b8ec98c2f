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
 *
 * Ledger: gateway.audit.ledger.Ledger compiled, the audit writer's hot state. Its
 * append(template, values) takes the writer's lock, seals as above with the time now,
 * moves the chain, queues a Sealed and counts it; fill(templates, key, values, pin) is
 * TemplateCache.fill's hit (the dict lookup and pin check first). A statement's two
 * records are two such calls. tests/test_audit_ledger.py holds it to the Python class.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <sys/uio.h>
#include <stdio.h>
#include <string.h>
#include <math.h>
#include <sched.h>
#include <time.h>

#define INT_LIMIT 1000000000000LL /* 10**12: a hole holds at most 12 digits, short of a PAN */
#define MAX_ARGS 64
#define NUM_MAX 16 /* room for 12 digits, or "false" */

typedef struct {
    const char *data;
    Py_ssize_t len;
    char num[NUM_MAX];
} arg_t;

/* x (0 <= x < 10**12) as decimal digits into a: snprintf's format parsing was a tenth of
 * a seal, for three or four numbers per record. */
static void
write_decimal(long long x, arg_t *a)
{
    char *end = a->num + NUM_MAX, *p = end;
    do {
        *--p = (char)('0' + x % 10);
        x /= 10;
    } while (x > 0);
    a->len = end - p;
    a->data = p;
}

/* An integer in [0, 10**12) written as decimal digits. 1 on success, 0 when it is not. */
static int
int_arg(PyObject *v, arg_t *a)
{
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (x == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (overflow || x < 0 || x >= INT_LIMIT)
        return 0;
    write_decimal(x, a);
    return 1;
}

static int
value_arg(PyObject *v, arg_t *a)
{
    if (PyLong_CheckExact(v))
        return int_arg(v, a);
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

/* `values` (a tuple) as hole values into out (MAX_ARGS - 3 of room): 1, or 0 when one is
 * not a value a hole holds (no error set). Past the room: 1, nothing read (seal_parts
 * refuses that many). */
static int
values_args(PyObject *values, arg_t *out)
{
    const Py_ssize_t n = PyTuple_GET_SIZE(values);
    if (n > MAX_ARGS - 3)
        return 1;
    for (Py_ssize_t i = 0; i < n; i++)
        if (!value_arg(PyTuple_GET_ITEM(values, i), &out[i]))
            return 0;
    return 1;
}

/* A str of n ASCII characters: PyUnicode_FromStringAndSize decodes them as UTF-8. */
static PyObject *
ascii_str(const char *text, Py_ssize_t n)
{
    PyObject *s = PyUnicode_New(n, 127);
    if (s != NULL)
        memcpy(PyUnicode_DATA(s), text, (size_t)n);
    return s;
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

/* A record's line is its body (canonical JSON, `size` bytes) with the hash member written
 * over the closing '}': body[:-1] + ',"hash":"' + digest + '"}\n'. */
static const char hash_head[] = ",\"hash\":\"";
static const char hash_tail[] = "\"}\n";
#define LINE_LEN(size) ((size) - 1 + (Py_ssize_t)sizeof hash_head - 1 + 64 + \
                        (Py_ssize_t)sizeof hash_tail - 1)

/* sha256(prev + body) as 64 hex digits into text, with OpenSSL's functions (found):
 * 1, or 0 when OpenSSL failed. Touches no Python object: runs without the GIL. */
static int
sha256_hex(const char *prev, Py_ssize_t plen, const char *body, Py_ssize_t size, char *text)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[32];
    _Alignas(16) unsigned char ctx[SHA_CTX_ROOM];
    if (sha_init(ctx) != 1 || sha_update(ctx, prev, (size_t)plen) != 1 ||
            sha_update(ctx, body, (size_t)size) != 1 || sha_final(md, ctx) != 1)
        return 0;
    for (int i = 0; i < 32; i++) {
        text[2 * i] = hex[md[i] >> 4];
        text[2 * i + 1] = hex[md[i] & 15];
    }
    return 1;
}

/* The hash member over the body's closing '}' (the line has LINE_LEN(size) bytes). */
static void
close_line(char *body, Py_ssize_t size, const char *digest)
{
    char *w = body + size - 1;
    memcpy(w, hash_head, sizeof hash_head - 1);
    w += sizeof hash_head - 1;
    memcpy(w, digest, 64);
    w += 64;
    memcpy(w, hash_tail, sizeof hash_tail - 1);
}

/* Whether hole value k (of seq, prev, ts, *values) is written quoted: prev and ts. */
#define QUOTED(k) ((k) == 1 || (k) == 2)

/* A record's body into w (its size counted first): the template's chunks with each
 * hole's value, vals[ks[i]], between them. Reads the chunks' bytes and nothing else of
 * Python's: runs without the GIL while they are held. */
static void
fill_body(PyObject *chunks, Py_ssize_t nholes, const unsigned char *ks, const arg_t *vals,
          char *w)
{
    for (Py_ssize_t i = 0; i <= nholes; i++) {
        PyObject *c = PyTuple_GET_ITEM(chunks, i);
        memcpy(w, PyBytes_AS_STRING(c), (size_t)PyBytes_GET_SIZE(c));
        w += PyBytes_GET_SIZE(c);
        if (i == nholes)
            break;
        const int k = ks[i];
        if (QUOTED(k))
            *w++ = '"';
        memcpy(w, vals[k].data, (size_t)vals[k].len);
        w += vals[k].len;
        if (QUOTED(k))
            *w++ = '"';
    }
}

/* The sealing itself, shared by seal() and Ledger.append(): `chunks` and `picks` tuples
 * as seal() takes them, its values read (`given`, `nvalues` of them; `given_ok` 0: one
 * did not fit), `seq` already a valid seq. Returns 1 with new
 * references in *line, *digest and *stamp_out (`ts`, or the time now), 0 when a value
 * does not fit (nothing hashed, no error set), -1 with an error set. */
static int
seal_parts(PyObject *chunks, PyObject *picks, long long seq, PyObject *prev, PyObject *ts,
           const arg_t *given, Py_ssize_t nvalues, int given_ok, PyObject *sha256,
           PyObject **line_out, PyObject **digest_out, PyObject **ts_out)
{
    arg_t vals[MAX_ARGS];
    unsigned char ks[MAX_ARGS];

    const Py_ssize_t nholes = PyTuple_GET_SIZE(picks);
    if (PyTuple_GET_SIZE(chunks) != nholes + 1 || nholes > MAX_ARGS ||
            3 + nvalues > MAX_ARGS) {
        PyErr_SetString(PyExc_ValueError, "seal: one chunk more than holes, at most 64 holes");
        return -1;
    }
    if (seq < 1 || seq >= INT_LIMIT)
        return 0;
    write_decimal(seq, &vals[0]);
    char stamp[TS_ROOM];
    if (ts == Py_None) {
        if (!now_ts(stamp))
            return -1;
        vals[2].data = stamp;
        vals[2].len = TS_LEN;
    } else if (!text_arg(ts, &vals[2])) {
        return 0;
    }
    if (!text_arg(prev, &vals[1]))
        return 0;
    if (!given_ok)
        return 0;
    for (Py_ssize_t i = 0; i < nvalues; i++) {
        vals[3 + i].data = given[i].data; /* (into given's own digits: the caller's) */
        vals[3 + i].len = given[i].len;
    }

    /* The body's size, with every pick checked before anything is written. */
    Py_ssize_t size = 0;
    for (Py_ssize_t i = 0; i <= nholes; i++) {
        PyObject *c = PyTuple_GET_ITEM(chunks, i);
        if (!PyBytes_Check(c)) {
            PyErr_SetString(PyExc_TypeError, "seal: chunks must be bytes");
            return -1;
        }
        size += PyBytes_GET_SIZE(c);
        if (i == nholes)
            break;
        PyObject *p = PyTuple_GET_ITEM(picks, i);
        if (!PyLong_Check(p)) {
            PyErr_SetString(PyExc_TypeError, "seal: picks must be integers");
            return -1;
        }
        const Py_ssize_t k = PyLong_AsSsize_t(p);
        if (k < 0 || k >= 3 + nvalues) { /* e.g. fewer values than the template has holes */
            PyErr_Clear();
            return 0;
        }
        ks[i] = (unsigned char)k; /* (< MAX_ARGS) */
        size += vals[k].len + 2 * QUOTED(k);
    }
    if (size < 1) {
        PyErr_SetString(PyExc_ValueError, "seal: an empty record");
        return -1;
    }

    /* The line is written in place: the body, then its hash member over the body's '}'.
     * The hash input is prev + body: with the direct digest, two updates (prev is one
     * 64-byte block when it is a digest); with hashlib, one contiguous copy. */
    PyObject *line = PyBytes_FromStringAndSize(NULL, LINE_LEN(size));
    if (line == NULL)
        return -1;
    char *body = PyBytes_AS_STRING(line);
    fill_body(chunks, nholes, ks, vals, body);

    char text[64];
    PyObject *digest = NULL;
    if (sha256 == Py_None) {
        if (sha_init == NULL) {
            PyErr_SetString(PyExc_ValueError, "seal: no OpenSSL SHA-256 in this process");
            goto fail;
        }
        if (!sha256_hex(vals[1].data, vals[1].len, body, size, text)) {
            PyErr_SetString(PyExc_ValueError, "seal: OpenSSL's SHA-256 failed");
            goto fail;
        }
        digest = ascii_str(text, 64);
        if (digest == NULL)
            goto fail;
    } else {
        PyObject *input = PyBytes_FromStringAndSize(NULL, vals[1].len + size);
        if (input == NULL)
            goto fail;
        memcpy(PyBytes_AS_STRING(input), vals[1].data, (size_t)vals[1].len);
        memcpy(PyBytes_AS_STRING(input) + vals[1].len, body, (size_t)size);
        PyObject *hasher = PyObject_CallOneArg(sha256, input);
        Py_DECREF(input);
        if (hasher == NULL)
            goto fail;
        digest = PyObject_CallMethod(hasher, "hexdigest", NULL);
        Py_DECREF(hasher);
        if (digest == NULL)
            goto fail;
        if (!PyUnicode_Check(digest) || !PyUnicode_IS_ASCII(digest) ||
                PyUnicode_GET_LENGTH(digest) != 64) {
            PyErr_SetString(PyExc_TypeError, "seal: sha256 gave no 64-digit hex digest");
            goto fail;
        }
    }
    close_line(body, size, PyUnicode_DATA(digest));
    PyObject *stamp_obj;
    if (ts == Py_None) {
        stamp_obj = ascii_str(stamp, TS_LEN);
        if (stamp_obj == NULL)
            goto fail;
    } else {
        stamp_obj = Py_NewRef(ts);
    }
    *line_out = line;
    *digest_out = digest;
    *ts_out = stamp_obj;
    return 1;
fail:
    Py_DECREF(line);
    Py_XDECREF(digest);
    return -1;
}

static PyObject *
seal(PyObject *module, PyObject *args)
{
    PyObject *chunks, *picks, *seq, *prev, *ts, *values, *sha256;
    (void)module;
    if (!PyArg_ParseTuple(args, "O!O!OOOO!O:seal", &PyTuple_Type, &chunks, &PyTuple_Type,
                          &picks, &seq, &prev, &ts, &PyTuple_Type, &values, &sha256))
        return NULL;
    if (!PyLong_CheckExact(seq))
        Py_RETURN_NONE;
    int overflow = 0;
    const long long n = PyLong_AsLongLongAndOverflow(seq, &overflow);
    if (overflow || n < 1 || n >= INT_LIMIT)
        Py_RETURN_NONE; /* seq must be in (0, 10**12) */
    arg_t given[MAX_ARGS];
    const int given_ok = values_args(values, given);
    PyObject *line, *digest, *stamp;
    const int r = seal_parts(chunks, picks, n, prev, ts, given, PyTuple_GET_SIZE(values),
                             given_ok, sha256, &line, &digest, &stamp);
    if (r < 0)
        return NULL;
    if (r == 0)
        Py_RETURN_NONE;
    PyObject *result = PyTuple_Pack(3, line, digest, stamp);
    Py_DECREF(line);
    Py_DECREF(digest);
    Py_DECREF(stamp);
    return result;
}

/* A statement record complete() took but has not sealed yet: its template's parts, its
 * holes' values and the time it was recorded. */
typedef struct {
    PyObject *parts;
    arg_t given[4];
    signed char off[4]; /* where given[k]'s digits start in its num; -1: data is static */
    char stamp[TS_LEN];
} pend_t;

/* Ledger: gateway.audit.ledger.Ledger compiled (that class is the reference and says
 * what each member means). append() is the writer's hot path: the writer's lock taken,
 * the record sealed onto the chain, queued as a Sealed, counted, in one call.
 *
 * complete() does not seal: it keeps the record's values (`pend`) and returns, and the
 * next settle() seals every kept record in order onto the chain, under the lock, before
 * anything else is sealed or taken (append, fill, take, and the writer's own seals, which
 * call settle() first: push() refuses a record sealed past unsealed ones). Usually the
 * writer thread's take() does it, a batch at a time: sealed one by one between a busy
 * event loop's other work, each record cost several times what it costs in a batch. */
typedef struct {
    PyObject_HEAD
    pend_t *pend;           /* kept by complete(), in order */
    Py_ssize_t npend, cpend;
    Py_ssize_t unsealed;    /* npend, and those a settle() in progress has not sealed yet */
    int settling;           /* a settle() is sealing: a nested one (its on_due) returns */
    PyObject *chain;  /* Chain: its seq and head attributes hold the chain's state */
    PyObject *queue;  /* list of Sealed no write has taken yet */
    PyObject *sealed; /* the Sealed class */
    PyObject *sha256; /* hashlib.sha256, or None: OpenSSL's called here */
    PyObject *acquire, *release, *on_due;
    PyObject *instance; /* the chain's: a template of another chain is refused */
    long long durable, max_backlog, checkpoint_every, segment_limit;
    long long segment_bytes, segment_records, since_checkpoint;
    int open;
} Ledger;

static PyObject *str_seq, *str_head, *str_parts, *str_instance;

/* Every object a Ledger holds, listed once for traverse and clear. */
#define LEDGER_OBJECTS(X) \
    X(chain) X(queue) X(sealed) X(sha256) X(acquire) X(release) X(on_due) X(instance)

static int
ledger_traverse(Ledger *self, visitproc visit, void *arg)
{
    for (Py_ssize_t i = 0; i < self->npend; i++)
        Py_VISIT(self->pend[i].parts);
#define VISIT_ONE(member) Py_VISIT(self->member);
    LEDGER_OBJECTS(VISIT_ONE)
#undef VISIT_ONE
    return 0;
}

/* Drop `n` kept records from `pend` (their values only: the array is the caller's). */
static void
pend_drop(pend_t *pend, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        Py_DECREF(pend[i].parts);
}

static int
ledger_clear(Ledger *self)
{
    pend_t *pend = self->pend;
    const Py_ssize_t n = self->npend;
    self->pend = NULL;
    self->npend = self->cpend = 0;
    self->unsealed -= n;
    pend_drop(pend, n);
    PyMem_Free(pend);
#define CLEAR_ONE(member) Py_CLEAR(self->member);
    LEDGER_OBJECTS(CLEAR_ONE)
#undef CLEAR_ONE
    return 0;
}

static void
ledger_dealloc(Ledger *self)
{
    PyObject_GC_UnTrack(self);
    ledger_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
ledger_init(Ledger *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"chain", "lock", "on_due", "sealed", "sha256", "max_backlog",
                             "checkpoint_every", "segment_limit", NULL};
    PyObject *chain, *lock, *on_due, *sealed, *sha256;
    long long max_backlog, every, limit;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOO!O$LLL:Ledger", kwlist, &chain, &lock,
                                     &on_due, &PyType_Type, &sealed, &sha256, &max_backlog,
                                     &every, &limit))
        return -1;
    if (!PyType_IsSubtype((PyTypeObject *)sealed, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "Ledger: sealed must be a tuple class");
        return -1;
    }
    if (sha256 == Py_None && sha_init == NULL) {
        PyErr_SetString(PyExc_ValueError, "Ledger: no OpenSSL SHA-256 in this process");
        return -1;
    }
    PyObject *acquire = PyObject_GetAttrString(lock, "acquire");
    PyObject *release = acquire ? PyObject_GetAttrString(lock, "release") : NULL;
    PyObject *queue = release ? PyList_New(0) : NULL;
    PyObject *instance = queue ? PyObject_GetAttr(chain, str_instance) : NULL;
    PyObject *durable = instance ? PyObject_GetAttr(chain, str_seq) : NULL;
    if (durable == NULL) {
        Py_XDECREF(instance);
        Py_XDECREF(acquire);
        Py_XDECREF(release);
        Py_XDECREF(queue);
        return -1;
    }
    self->durable = PyLong_AsLongLong(durable);
    Py_DECREF(durable);
    if (self->durable == -1 && PyErr_Occurred()) {
        Py_DECREF(instance);
        Py_DECREF(acquire);
        Py_DECREF(release);
        Py_DECREF(queue);
        return -1;
    }
    if (self->settling) {
        PyErr_SetString(PyExc_RuntimeError, "Ledger: re-initialised while sealing");
        Py_DECREF(instance);
        Py_DECREF(acquire);
        Py_DECREF(release);
        Py_DECREF(queue);
        return -1;
    }
    ledger_clear(self);
    self->unsealed = 0;
    self->chain = Py_NewRef(chain);
    self->queue = queue;
    self->sealed = Py_NewRef(sealed);
    self->sha256 = Py_NewRef(sha256);
    self->acquire = acquire;
    self->release = release;
    self->on_due = Py_NewRef(on_due);
    self->instance = instance;
    self->max_backlog = max_backlog;
    self->checkpoint_every = every;
    self->segment_limit = limit;
    self->segment_bytes = self->segment_records = self->since_checkpoint = 0;
    self->open = 0;
    return 0;
}

static int
ledger_due(Ledger *self)
{
    return (self->checkpoint_every > 0 && self->since_checkpoint >= self->checkpoint_every) ||
           (self->segment_limit > 0 && self->segment_bytes >= self->segment_limit);
}

/* Queue `item` (a Sealed) and count it. */
static int
ledger_count(Ledger *self, PyObject *item, Py_ssize_t nbytes)
{
    if (PyList_Append(self->queue, item) < 0)
        return -1;
    self->segment_bytes += nbytes;
    self->segment_records += 1;
    self->since_checkpoint += 1;
    return 0;
}

/* 1 with an error set when the ledger's __init__ has not run (or failed), else 0. */
static int
ledger_unready(Ledger *self)
{
    if (self->chain != NULL && self->queue != NULL)
        return 0;
    PyErr_SetString(PyExc_ValueError, "Ledger: not initialised");
    return 1;
}

/* The chain's seq (the last record sealed) into *seq: 0, or -1 with an error set. */
static int
ledger_chain_seq(Ledger *self, long long *seq)
{
    PyObject *seq_obj = PyObject_GetAttr(self->chain, str_seq);
    if (seq_obj == NULL)
        return -1;
    *seq = PyLong_AsLongLong(seq_obj);
    Py_DECREF(seq_obj);
    return *seq == -1 && PyErr_Occurred() ? -1 : 0;
}

/* Whether an append is refused with the chain at `seq`: not open, or max_backlog records
 * not durable (records complete() kept count as appended). append, complete and admit
 * refuse by this one rule. */
static int
ledger_refuses(Ledger *self, long long seq)
{
    return !self->open || seq + self->unsealed - self->durable >= self->max_backlog;
}

/* The seq the next record gets, after those kept, into *next: 1, or 0 when an append is
 * refused, -1 with an error set. */
static int
ledger_next_seq(Ledger *self, long long *next)
{
    long long seq;
    if (ledger_chain_seq(self, &seq) < 0)
        return -1;
    if (ledger_refuses(self, seq))
        return 0;
    *next = seq + self->unsealed + 1;
    return 1;
}

/* Out of the cyclic GC's sight, as CPython does to tuples of atomic values on its own
 * (only in a collection, which would first promote it): a record waits in the queue up
 * to a second, so tracked, the busy gateway's thousands of them reached the oldest
 * generation every second and brought full collections of the whole heap with them.
 * Its items are an int, strs and bytes, so no cycle can run through it; the template's
 * type and session are checked to be so (a session is None outside one). */
static void
sealed_untrack(PyObject *item)
{
    PyObject *kind = PyTuple_GET_ITEM(item, 4), *session = PyTuple_GET_ITEM(item, 5);
    if (PyUnicode_CheckExact(kind) && (session == Py_None || PyUnicode_CheckExact(session)) &&
            PyObject_GC_IsTracked(item))
        PyObject_GC_UnTrack(item);
}

/* Under the lock, after settle(): 1 with *seq_out set, 2 a value did not fit, 0 refused
 * (closed, or the backlog is full), -1 an error. `ts`: the record's time (None: now).
 * `admitted`: complete() took it, so it is not refused now. */
static int
ledger_append_locked(Ledger *self, PyObject *parts, const arg_t *given, Py_ssize_t nvalues,
                     int given_ok, PyObject *ts, int admitted, long long *seq_out)
{
    long long seq = 0;
    if (ledger_chain_seq(self, &seq) < 0)
        return -1;
    if (!admitted && ledger_refuses(self, seq))
        return 0;
    seq += 1; /* (records kept meanwhile, by another thread, come after it) */
    PyObject *prev = PyObject_GetAttr(self->chain, str_head);
    if (prev == NULL)
        return -1;
    PyObject *line, *digest, *stamp;
    const int r = seal_parts(PyTuple_GET_ITEM(parts, 0), PyTuple_GET_ITEM(parts, 1), seq, prev,
                             ts, given, nvalues, given_ok, self->sha256, &line, &digest,
                             &stamp);
    if (r <= 0) {
        Py_DECREF(prev);
        return r < 0 ? -1 : 2;
    }
    /* Every allocation before the chain moves: a failure leaves it as it was. */
    PyObject *item = NULL, *num = PyLong_FromLongLong(seq);
    const Py_ssize_t nbytes = PyBytes_GET_SIZE(line);
    if (num != NULL)
        item = ((PyTypeObject *)self->sealed)->tp_alloc((PyTypeObject *)self->sealed, 6);
    if (item == NULL) {
        Py_DECREF(prev);
        Py_XDECREF(num);
        Py_DECREF(line);
        Py_DECREF(digest);
        Py_DECREF(stamp);
        return -1;
    }
    PyTuple_SET_ITEM(item, 0, num);
    PyTuple_SET_ITEM(item, 1, Py_NewRef(digest));
    PyTuple_SET_ITEM(item, 2, line);
    PyTuple_SET_ITEM(item, 3, stamp);
    PyTuple_SET_ITEM(item, 4, Py_NewRef(PyTuple_GET_ITEM(parts, 2)));
    PyTuple_SET_ITEM(item, 5, Py_NewRef(PyTuple_GET_ITEM(parts, 3)));
    sealed_untrack(item);
    /* Queued first, then the chain moves: if either fails, neither happened. */
    int ok = PyList_Append(self->queue, item) == 0;
    if (ok && (PyObject_SetAttr(self->chain, str_head, digest) < 0 ||
               PyObject_SetAttr(self->chain, str_seq, PyTuple_GET_ITEM(item, 0)) < 0)) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        if (PyObject_SetAttr(self->chain, str_head, prev) < 0)
            PyErr_Clear();
        const Py_ssize_t n = PyList_GET_SIZE(self->queue);
        if (PyList_SetSlice(self->queue, n - 1, n, NULL) < 0)
            PyErr_Clear();
        PyErr_Restore(type, value, tb);
        ok = 0;
    }
    Py_DECREF(digest);
    Py_DECREF(prev);
    Py_DECREF(item);
    if (!ok)
        return -1;
    self->segment_bytes += nbytes;
    self->segment_records += 1;
    self->since_checkpoint += 1;
    *seq_out = seq;
    return 1;
}

/* A template as settle_batch() writes it without the GIL: its chunks' bytes and where
 * each hole's value comes from, read (and checked) once with the GIL. */
typedef struct {
    PyObject *parts;
    Py_ssize_t nholes, fixed; /* fixed: the chunks' bytes and the quotes around holes */
    unsigned char ks[MAX_ARGS];
} batch_template_t;

#define BATCH_VALUES 7    /* seq, prev, ts and a kept record's four holes */

/* `parts`' slot in `ts` (read and checked on first sight; room for one more): its
 * index, or -1 when it is not one the batch writes (the one-record path then says why,
 * or seals it). Each session has its own templates, and a busy gateway's sessions take
 * turns: the latest first. */
static int
batch_template(batch_template_t *ts, int *nt, PyObject *parts)
{
    for (int t = *nt - 1; t >= 0; t--)
        if (ts[t].parts == parts)
            return t;
    PyObject *chunks = PyTuple_GET_ITEM(parts, 0), *picks = PyTuple_GET_ITEM(parts, 1);
    const Py_ssize_t nholes = PyTuple_GET_SIZE(picks);
    if (PyTuple_GET_SIZE(chunks) != nholes + 1 || nholes > MAX_ARGS)
        return -1;
    batch_template_t *t = &ts[*nt];
    Py_ssize_t fixed = 0;
    for (Py_ssize_t i = 0; i <= nholes; i++) {
        PyObject *c = PyTuple_GET_ITEM(chunks, i);
        if (!PyBytes_Check(c))
            return -1;
        fixed += PyBytes_GET_SIZE(c);
        if (i == nholes)
            break;
        PyObject *p = PyTuple_GET_ITEM(picks, i);
        const long k = PyLong_Check(p) ? PyLong_AsLong(p) : -1;
        if (k < 0 || k >= BATCH_VALUES) {
            PyErr_Clear();
            return -1;
        }
        t->ks[i] = (unsigned char)k;
        fixed += 2 * QUOTED(k);
    }
    if (fixed < 1)
        return -1;
    t->parts = parts;
    t->nholes = nholes;
    t->fixed = fixed;
    return (*nt)++;
}

/* The four values complete() kept for `e`, copied into given (their digits found by
 * offset in the copy: the kept array may have moved since). */
static void
pend_given(const pend_t *e, arg_t *given)
{
    for (int k = 0; k < 4; k++) {
        given[k] = e->given[k];
        if (e->off[k] >= 0)
            given[k].data = given[k].num + e->off[k];
    }
}

/* One kept record's hole values: seq, prev (its predecessor's digest), ts, then the four
 * complete() kept. Touches no Python object. */
static void
batch_values(const pend_t *e, long long seq, const char *prev, Py_ssize_t plen, arg_t *vals)
{
    write_decimal(seq, &vals[0]);
    vals[1].data = prev;
    vals[1].len = plen;
    vals[2].data = e->stamp;
    vals[2].len = TS_LEN;
    pend_given(e, vals + 3);
}

#define SETTLE_BATCH 256 /* records sealed in one batch: between two, other threads run */
#define NOGIL_MIN 64      /* the fewest a batch writes and hashes without the GIL */

/* Seal up to SETTLE_BATCH records complete() kept (`pend`, `n` of them), in order, with
 * the GIL let go while their lines are written and hashed: settling a busy gateway's
 * records held the GIL for all of it, milliseconds, and the event loop waited (a
 * batch of fewer than NOGIL_MIN keeps it). The batch ends after a record that makes a
 * checkpoint or rotation due, and before one it cannot write (a template it cannot
 * read, a seq past 12 digits: the one-record path seals it, or says why not). `ts`:
 * room for a template per record. *sealed: how many were sealed (0: none it could).
 * 0, or -1 with an error set and none of them sealed. Under the writer's lock. */
static int
settle_batch_in(Ledger *self, batch_template_t *ts, pend_t *pend, Py_ssize_t n,
                Py_ssize_t *sealed)
{
    int nt = 0;
    PyObject *lines[SETTLE_BATCH];
    Py_ssize_t sizes[SETTLE_BATCH];
    unsigned char which[SETTLE_BATCH];
    char (*digests)[64] = NULL;
    *sealed = 0;
    long long seq0;
    if (ledger_chain_seq(self, &seq0) < 0)
        return -1;
    seq0 += 1;
    PyObject *head = PyObject_GetAttr(self->chain, str_head);
    if (head == NULL)
        return -1;
    arg_t prev0;
    if (!text_arg(head, &prev0)) { /* the one-record path says so */
        Py_DECREF(head);
        return 0;
    }
    /* How many: each line's size, a due checkpoint counted as the one-record path would */
    long long bytes = self->segment_bytes, since = self->since_checkpoint;
    Py_ssize_t m = 0;
    while (m < n && m < SETTLE_BATCH && seq0 + m < INT_LIMIT) {
        const int t = batch_template(ts, &nt, pend[m].parts);
        if (t < 0)
            break;
        arg_t vals[BATCH_VALUES];
        batch_values(&pend[m], seq0 + m, prev0.data, m == 0 ? prev0.len : 64, vals);
        Py_ssize_t size = ts[t].fixed;
        for (Py_ssize_t i = 0; i < ts[t].nholes; i++)
            size += vals[ts[t].ks[i]].len;
        sizes[m] = size;
        which[m] = (unsigned char)t;
        m++;
        bytes += LINE_LEN(size);
        since += 1;
        if ((self->checkpoint_every > 0 && since >= self->checkpoint_every) ||
                (self->segment_limit > 0 && bytes >= self->segment_limit))
            break;
    }
    if (m == 0) {
        Py_DECREF(head);
        return 0;
    }
    Py_ssize_t made = 0;
    digests = PyMem_Malloc((size_t)m * 64);
    if (digests == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    for (; made < m; made++) {
        lines[made] = PyBytes_FromStringAndSize(NULL, LINE_LEN(sizes[made]));
        if (lines[made] == NULL)
            goto fail;
    }
    /* Written and hashed without the GIL: every object read here is held (the kept
     * records' parts, the chain's head) and immutable, or new and only ours (the lines);
     * anything else that seals waits for the writer's lock, held here. */
    int ok = 1;
    /* (a few records are sealed holding it: letting go costs a thread handoff, and an
     * event loop's write_through() settles a handful at a time) */
    PyThreadState *saved = m >= NOGIL_MIN ? PyEval_SaveThread() : NULL;
    for (Py_ssize_t j = 0; j < m && ok; j++) {
        const batch_template_t *t = &ts[which[j]];
        arg_t vals[BATCH_VALUES];
        batch_values(&pend[j], seq0 + j, j == 0 ? prev0.data : digests[j - 1],
                     j == 0 ? prev0.len : 64, vals);
        char *body = PyBytes_AS_STRING(lines[j]);
        fill_body(PyTuple_GET_ITEM(t->parts, 0), t->nholes, t->ks, vals, body);
        ok = sha256_hex(vals[1].data, vals[1].len, body, sizes[j], digests[j]);
        if (ok)
            close_line(body, sizes[j], digests[j]);
    }
    if (saved != NULL)
        PyEval_RestoreThread(saved);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "seal: OpenSSL's SHA-256 failed");
        goto fail;
    }
    /* The Sealed records, then queued at once, then the chain moves: if anything fails,
     * nothing happened. */
    PyObject *batch = PyList_New(m);
    if (batch == NULL)
        goto fail;
    for (Py_ssize_t j = 0; j < m; j++) {
        PyObject *parts = pend[j].parts;
        PyObject *digest = ascii_str(digests[j], 64);
        PyObject *stamp = digest ? ascii_str(pend[j].stamp, TS_LEN) : NULL;
        PyObject *num = stamp ? PyLong_FromLongLong(seq0 + j) : NULL;
        PyObject *item = num ? ((PyTypeObject *)self->sealed)->tp_alloc(
                                   (PyTypeObject *)self->sealed, 6) : NULL;
        if (item == NULL) {
            Py_XDECREF(digest);
            Py_XDECREF(stamp);
            Py_XDECREF(num);
            Py_DECREF(batch);
            goto fail;
        }
        PyTuple_SET_ITEM(item, 0, num);
        PyTuple_SET_ITEM(item, 1, digest);
        PyTuple_SET_ITEM(item, 2, Py_NewRef(lines[j]));
        PyTuple_SET_ITEM(item, 3, stamp);
        PyTuple_SET_ITEM(item, 4, Py_NewRef(PyTuple_GET_ITEM(parts, 2)));
        PyTuple_SET_ITEM(item, 5, Py_NewRef(PyTuple_GET_ITEM(parts, 3)));
        sealed_untrack(item);
        PyList_SET_ITEM(batch, j, item);
    }
    const Py_ssize_t q = PyList_GET_SIZE(self->queue);
    int moved = PyList_SetSlice(self->queue, q, q, batch) == 0;
    PyObject *last = PyList_GET_ITEM(batch, m - 1);
    if (moved && (PyObject_SetAttr(self->chain, str_head, PyTuple_GET_ITEM(last, 1)) < 0 ||
                  PyObject_SetAttr(self->chain, str_seq, PyTuple_GET_ITEM(last, 0)) < 0)) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        if (PyObject_SetAttr(self->chain, str_head, head) < 0)
            PyErr_Clear();
        if (PyList_SetSlice(self->queue, q, q + m, NULL) < 0)
            PyErr_Clear();
        PyErr_Restore(type, value, tb);
        moved = 0;
    }
    Py_DECREF(batch);
    if (!moved)
        goto fail;
    for (Py_ssize_t j = 0; j < m; j++) {
        self->segment_bytes += PyBytes_GET_SIZE(lines[j]);
        Py_DECREF(lines[j]);
        Py_DECREF(pend[j].parts);
    }
    self->segment_records += m;
    self->since_checkpoint += m;
    self->unsealed -= m;
    PyMem_Free(digests);
    Py_DECREF(head);
    *sealed = m;
    return 0;
fail:
    for (Py_ssize_t j = 0; j < made; j++)
        Py_DECREF(lines[j]);
    PyMem_Free(digests);
    Py_DECREF(head);
    return -1;
}

/* settle_batch_in with room for a template per record (SETTLE_BATCH of them). */
static int
settle_batch(Ledger *self, pend_t *pend, Py_ssize_t n, Py_ssize_t *sealed)
{
    batch_template_t *ts = PyMem_Malloc(SETTLE_BATCH * sizeof(batch_template_t));
    if (ts == NULL) {
        *sealed = 0;
        PyErr_NoMemory();
        return -1;
    }
    const int r = settle_batch_in(self, ts, pend, n, sealed);
    PyMem_Free(ts);
    return r;
}

#define SETTLE_YIELD 256 /* records sealed one by one between two chances for others */

/* Seal the records complete() kept, in order (under the lock); 0, or -1 with an error
 * set and the records not sealed still kept, ahead of any kept meanwhile. They are
 * detached first: the GIL is let go between batches (a busy gateway's records take
 * milliseconds to seal, and the event loop must not wait that long), and a thread may
 * then complete() a statement, which is kept after them; whatever else could touch the
 * chain takes the lock, held here. Batches (settle_batch) with OpenSSL's digest; one by
 * one with hashlib's, or for a record a batch cannot write. A checkpoint or rotation due
 * after one of them is made there (on_due), as append() would. */
static int
ledger_settle(Ledger *self)
{
    if (self->npend == 0 || self->settling)
        return 0;
    pend_t *pend = self->pend;
    const Py_ssize_t n = self->npend;
    self->pend = NULL;
    self->npend = self->cpend = 0;
    self->settling = 1;
    Py_ssize_t i = 0, alone = 0;
    int failed = 0;
    while (i < n && !failed) {
        Py_ssize_t m = 0;
        if (self->sha256 == Py_None && settle_batch(self, pend + i, n - i, &m) < 0) {
            failed = 1;
            break;
        }
        i += m;
        if (m == 0) {
            pend_t *e = &pend[i];
            arg_t given[4];
            pend_given(e, given);
            PyObject *ts = ascii_str(e->stamp, TS_LEN);
            long long seq = 0;
            const int r = ts == NULL ? -1
                : ledger_append_locked(self, e->parts, given, 4, 1, ts, 1, &seq);
            Py_XDECREF(ts);
            if (r != 1) {
                if (!PyErr_Occurred()) /* (its values were read when it was kept) */
                    PyErr_SetString(PyExc_ValueError, "Ledger: a kept record no longer fits");
                failed = 1;
                break;
            }
            Py_DECREF(e->parts);
            self->unsealed--;
            i++;
            if (++alone == SETTLE_YIELD && i < n) {
                alone = 0;
                Py_BEGIN_ALLOW_THREADS
                sched_yield(); /* (a thread waiting for the GIL takes it now, not in 5 ms) */
                Py_END_ALLOW_THREADS
            }
        }
        if (ledger_due(self)) {
            PyObject *done = PyObject_CallNoArgs(self->on_due);
            failed = done == NULL;
            Py_XDECREF(done);
        }
    }
    self->settling = 0;
    if (!failed) {
        PyMem_Free(pend);
        return 0;
    }
    /* Fail closed, losing nothing: what is left goes back ahead of what came since. */
    const Py_ssize_t left = n - i, since = self->npend;
    pend_t *back = PyMem_Malloc((size_t)(left + since + 1) * sizeof(pend_t));
    if (back == NULL) { /* no room to keep them: they are lost, and the writer fails */
        pend_drop(pend + i, left);
        self->unsealed -= left;
        PyMem_Free(pend);
        return -1;
    }
    memcpy(back, pend + i, (size_t)left * sizeof(pend_t));
    if (since)
        memcpy(back + left, self->pend, (size_t)since * sizeof(pend_t));
    PyMem_Free(self->pend);
    PyMem_Free(pend);
    self->pend = back;
    self->npend = self->cpend = left + since;
    return -1;
}

/* `template`'s parts (a new reference), checked to be a template of this chain; NULL
 * with an error set. */
static PyObject *
ledger_parts(Ledger *self, PyObject *template)
{
    PyObject *parts = PyObject_GetAttr(template, str_parts);
    if (parts == NULL)
        return NULL;
    if (!PyTuple_Check(parts) || PyTuple_GET_SIZE(parts) != 5 ||
            !PyTuple_Check(PyTuple_GET_ITEM(parts, 0)) ||
            !PyTuple_Check(PyTuple_GET_ITEM(parts, 1))) {
        Py_DECREF(parts);
        PyErr_SetString(PyExc_TypeError,
                        "append: template.parts is (chunks, picks, type, session, instance)");
        return NULL;
    }
    PyObject *of = PyTuple_GET_ITEM(parts, 4);
    const int same = of == self->instance ? 1 : PyObject_RichCompareBool(of, self->instance, Py_EQ);
    if (same != 1) {
        Py_DECREF(parts);
        if (same == 0)
            PyErr_SetString(PyExc_ValueError, "a template of another chain instance");
        return NULL;
    }
    return parts;
}

/* append() with its values read: the seq, 0 a value did not fit, -1 refused; NULL with
 * an error set. */
static PyObject *
ledger_append_args(Ledger *self, PyObject *template, const arg_t *given, Py_ssize_t nvalues,
                   int given_ok)
{
    if (ledger_unready(self))
        return NULL;
    PyObject *parts = ledger_parts(self, template);
    if (parts == NULL)
        return NULL;
    PyObject *got = PyObject_CallNoArgs(self->acquire);
    if (got == NULL) {
        Py_DECREF(parts);
        return NULL;
    }
    Py_DECREF(got);
    long long seq = 0;
    const int r = ledger_settle(self) < 0 ? -1
        : ledger_append_locked(self, parts, given, nvalues, given_ok, Py_None, 0, &seq);
    Py_DECREF(parts);
    int failed = r < 0;
    if (r == 1 && ledger_due(self)) {
        PyObject *done = PyObject_CallNoArgs(self->on_due);
        failed = done == NULL;
        Py_XDECREF(done);
    }
    /* release even with an error set: keep it aside while the lock's method runs */
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *released = PyObject_CallNoArgs(self->release);
    if (released == NULL) {
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        return NULL;
    }
    Py_DECREF(released);
    PyErr_Restore(type, value, tb);
    if (failed)
        return NULL;
    return PyLong_FromLongLong(r == 1 ? seq : r == 2 ? 0 : -1);
}

static PyObject *
ledger_append(Ledger *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "append(template, values: tuple)");
        return NULL;
    }
    arg_t given[MAX_ARGS];
    const int given_ok = values_args(args[1], given);
    return ledger_append_args(self, args[0], given, PyTuple_GET_SIZE(args[1]), given_ok);
}

/* fill(templates, key, values, pin): TemplateCache.fill's hit, in one call. `templates`
 * maps key -> (pin, template or None). Returns the seq, 0 when there is no template of
 * `key` for `pin` or a value does not fit (nothing appended: the caller takes the
 * Python path, which builds the record), -1 when refused. */
static PyObject *
ledger_fill(Ledger *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyDict_Check(args[0]) || !PyTuple_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "fill(templates: dict, key, values: tuple, pin)");
        return NULL;
    }
    PyObject *entry = PyDict_GetItemWithError(args[0], args[1]); /* borrowed */
    if (entry == NULL) {
        if (PyErr_Occurred())
            return NULL;
        return PyLong_FromLong(0);
    }
    if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 2 ||
            PyTuple_GET_ITEM(entry, 0) != args[3] || PyTuple_GET_ITEM(entry, 1) == Py_None)
        return PyLong_FromLong(0);
    PyObject *call[2] = {PyTuple_GET_ITEM(entry, 1), args[2]};
    Py_INCREF(entry); /* the template must outlive a dict change made meanwhile */
    PyObject *seq = ledger_append(self, call, 2);
    Py_DECREF(entry);
    return seq;
}

/* The rows a CommandComplete body counts, as records.rows_from_complete reads them: its
 * last word when there are two or more and that one is all digits. -1 when this reading
 * declines it (no count, over 12 digits, anything but printable ASCII and spaces before
 * the trailing NULs): the caller then takes the Python path, which reads every tag. */
static long long
complete_rows(const char *p, Py_ssize_t n)
{
    while (n > 0 && p[n - 1] == '\0')
        n--;
    int words = 0;
    Py_ssize_t last = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        const unsigned char c = (unsigned char)p[i];
        if (c == ' ')
            continue;
        if (c < 0x21 || c > 0x7e)
            return -1;
        if (i == 0 || p[i - 1] == ' ') {
            words++;
            last = i;
        }
    }
    if (words < 2)
        return -1;
    long long rows = 0;
    int digits = 0;
    for (Py_ssize_t i = last; i < n && p[i] != ' '; i++) {
        if (p[i] < '0' || p[i] > '9' || ++digits > 12)
            return -1;
        rows = rows * 10 + (p[i] - '0');
    }
    return rows;
}

static PyObject *str_statement, *str_allowed, *str_statements, *str_rows, *empty_tuple;

/* complete(templates, tag, body, totals): Session._statement_done's usual end in one
 * call — a CommandComplete whose statement had nothing masked, withheld or scrubbed (the
 * caller checks all but `withheld`): the statement record appended from the session's
 * template of its kind (key ("statement", command, "allowed", None, ())) with holes
 * (decision_seq, rows, 0, duration_us), and the session's totals counted (statements,
 * allowed, rows). The record is kept with its time, and sealed by the next settle()
 * (see Ledger), without the lock. Returns its seq-to-be (> 0); 0 when it declines (no
 * template yet, a tag or value it does not read, refused): nothing appended or counted,
 * the Python path does it all. tests/test_statement_done_native.py holds it to that path. */
static PyObject *
ledger_complete(Ledger *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyDict_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "complete(templates: dict, tag, body, totals)");
        return NULL;
    }
    if (ledger_unready(self))
        return NULL;
    PyObject *tag = args[1], *body = args[2], *totals = args[3];
    /* StatementTag: (plan, decision_seq, started, command, internal, withheld) */
    if (!PyTuple_Check(tag) || PyTuple_GET_SIZE(tag) != 6 || !PyBytes_Check(body) ||
            PyTuple_GET_ITEM(tag, 5) != Py_False || !PyFloat_Check(PyTuple_GET_ITEM(tag, 2)))
        return PyLong_FromLong(0);
    const double started = PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(tag, 2));
    if (started == 0.0)
        return PyLong_FromLong(0);
    const long long rows = complete_rows(PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body));
    if (rows < 0)
        return PyLong_FromLong(0);
    struct timespec t;
    if (clock_gettime(CLOCK_MONOTONIC, &t) != 0) /* time.perf_counter()'s clock */
        return PyLong_FromLong(0);
    const double us = nearbyint(((double)t.tv_sec + (double)t.tv_nsec * 1e-9 - started) * 1e6);
    if (!(us >= 0.0 && us < (double)INT_LIMIT))
        return PyLong_FromLong(0);
    PyObject *key = PyTuple_Pack(5, str_statement, PyTuple_GET_ITEM(tag, 3), str_allowed,
                                 Py_None, empty_tuple);
    if (key == NULL)
        return NULL;
    PyObject *entry = PyDict_GetItemWithError(args[0], key); /* borrowed */
    Py_DECREF(key);
    if (entry == NULL) {
        if (PyErr_Occurred())
            return NULL;
        return PyLong_FromLong(0);
    }
    if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 2 ||
            PyTuple_GET_ITEM(entry, 0) != Py_None || PyTuple_GET_ITEM(entry, 1) == Py_None)
        return PyLong_FromLong(0);
    /* the holes (decision_seq, rows, masked_values, duration_us), read as append reads
     * them, without the tuple */
    arg_t given[4];
    const int given_ok = value_arg(PyTuple_GET_ITEM(tag, 1), &given[0]);
    write_decimal(rows, &given[1]);
    write_decimal(0, &given[2]);
    write_decimal((long long)us, &given[3]);
    if (!given_ok)
        return PyLong_FromLong(0);
    PyObject *parts = ledger_parts(self, PyTuple_GET_ITEM(entry, 1));
    if (parts == NULL) /* (raised as append raises it) */
        return NULL;
    long long next = 0;
    const int nx = ledger_next_seq(self, &next);
    if (nx <= 0) { /* refused: the Python path says why */
        Py_DECREF(parts);
        return nx < 0 ? NULL : PyLong_FromLong(0);
    }
    if (self->npend == self->cpend) {
        const Py_ssize_t cap = self->cpend ? 2 * self->cpend : 1024;
        pend_t *grown = PyMem_Realloc(self->pend, (size_t)cap * sizeof(pend_t));
        if (grown == NULL) {
            Py_DECREF(parts);
            return PyErr_NoMemory();
        }
        self->pend = grown;
        self->cpend = cap;
    }
    PyObject *seq = PyLong_FromLongLong(next);
    pend_t *e = &self->pend[self->npend];
    if (seq == NULL || !now_ts(e->stamp)) {
        Py_XDECREF(seq);
        Py_DECREF(parts);
        return NULL;
    }
    for (int k = 0; k < 4; k++) { /* (an offset: the array may move) */
        e->given[k] = given[k];
        e->off[k] = given[k].data >= given[k].num && given[k].data < given[k].num + NUM_MAX
            ? (signed char)(given[k].data - given[k].num) : -1;
    }
    e->parts = parts;
    self->npend++; /* (counted when sealed: a checkpoint or rotation comes due there) */
    self->unsealed++;
    /* counted once appended (as SessionTotals.count would for "allowed") */
    PyObject *const names[3] = {str_statements, str_allowed, str_rows};
    const long long adds[3] = {1, 1, rows};
    for (int i = 0; i < 3; i++) {
        PyObject *v = PyObject_GetAttr(totals, names[i]);
        if (v == NULL)
            goto fail;
        PyObject *sum;
        long long was;
        int overflow = 0;
        if (PyLong_CheckExact(v) &&
                (was = PyLong_AsLongLongAndOverflow(v, &overflow), !overflow) &&
                was >= 0 && was <= LLONG_MAX - adds[i]) { /* (adds are >= 0) */
            sum = PyLong_FromLongLong(was + adds[i]);
        } else { /* (not an int counted so far: as Python adds) */
            PyObject *add = PyLong_FromLongLong(adds[i]);
            sum = add == NULL ? NULL : PyNumber_Add(v, add);
            Py_XDECREF(add);
        }
        Py_DECREF(v);
        if (sum == NULL)
            goto fail;
        const int r = PyObject_SetAttr(totals, names[i], sum);
        Py_DECREF(sum);
        if (r < 0)
            goto fail;
    }
    return seq;
fail:
    Py_DECREF(seq);
    return NULL;
}

/* admit(batch_records): AuditWriter.admit's check, in one call: -1 when an append would
 * be refused (not open, or max_backlog records not durable), 1 when `batch_records` or
 * more are queued (the writer thread should write them now), else 0. */
static PyObject *
ledger_admit(Ledger *self, PyObject *arg)
{
    const long long batch = PyLong_AsLongLong(arg);
    if (batch == -1 && PyErr_Occurred())
        return NULL;
    if (ledger_unready(self))
        return NULL;
    long long seq;
    const int next = ledger_next_seq(self, &seq);
    if (next < 0)
        return NULL;
    if (next == 0)
        return PyLong_FromLong(-1);
    return PyLong_FromLong(PyList_GET_SIZE(self->queue) + self->unsealed >= batch);
}

/* refuses(): whether an append would be refused now (admit's -1), for the writer's own
 * appends, which it seals in Python. */
static PyObject *
ledger_refuses_method(Ledger *self, PyObject *unused)
{
    (void)unused;
    if (ledger_unready(self))
        return NULL;
    long long seq;
    const int next = ledger_next_seq(self, &seq);
    if (next < 0)
        return NULL;
    return PyBool_FromLong(next == 0);
}

static PyObject *
ledger_push(Ledger *self, PyObject *item)
{
    if (self->queue == NULL || !PyTuple_Check(item) || PyTuple_GET_SIZE(item) < 3 ||
            !PyBytes_Check(PyTuple_GET_ITEM(item, 2))) {
        PyErr_SetString(PyExc_TypeError, "push(sealed): a Sealed record");
        return NULL;
    }
    if (self->npend && !self->settling) {
        PyErr_SetString(PyExc_RuntimeError, "push(sealed): a record sealed past records "
                        "complete() kept (settle() first)");
        return NULL;
    }
    if (ledger_count(self, item, PyBytes_GET_SIZE(PyTuple_GET_ITEM(item, 2))) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* ledger_settle() on a ledger that is initialised: 0, or -1 with an error set. */
static int
ledger_settled(Ledger *self)
{
    return ledger_unready(self) ? -1 : ledger_settle(self);
}

static PyObject *
ledger_take(Ledger *self, PyObject *unused)
{
    (void)unused;
    if (ledger_settled(self) < 0)
        return NULL;
    PyObject *fresh = PyList_New(0);
    if (fresh == NULL)
        return NULL;
    PyObject *taken = self->queue;
    self->queue = fresh;
    return taken;
}

static PyObject *
ledger_settle_method(Ledger *self, PyObject *unused)
{
    (void)unused;
    if (ledger_settled(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
ledger_get_pending(Ledger *self, void *closure)
{
    (void)closure;
    return PyLong_FromSsize_t(self->unsealed);
}

static PyObject *
ledger_get_due(Ledger *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(ledger_due(self));
}

static PyMethodDef ledger_methods[] = {
    {"append", (PyCFunction)(void (*)(void))ledger_append, METH_FASTCALL,
     "append(template, values) -> seq, 0 (a value does not fit) or -1 (refused)"},
    {"fill", (PyCFunction)(void (*)(void))ledger_fill, METH_FASTCALL,
     "fill(templates, key, values, pin) -> seq, 0 (no template, or a value does not fit) "
     "or -1 (refused)"},
    {"complete", (PyCFunction)(void (*)(void))ledger_complete, METH_FASTCALL,
     "complete(templates, tag, body, totals) -> seq, or 0: take the Python path"},
    {"admit", (PyCFunction)ledger_admit, METH_O,
     "admit(batch_records) -> -1 (an append would be refused), 1 (that many queued) or 0"},
    {"refuses", (PyCFunction)ledger_refuses_method, METH_NOARGS,
     "refuses() -> whether an append would be refused (closed, or the backlog full)"},
    {"push", (PyCFunction)ledger_push, METH_O, "push(sealed): queue and count a record"},
    {"take", (PyCFunction)ledger_take, METH_NOARGS,
     "take() -> the queue (after settle()), left empty"},
    {"settle", (PyCFunction)ledger_settle_method, METH_NOARGS,
     "settle(): seal the records complete() kept (under the lock)"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef ledger_members[] = {
    {"durable", T_LONGLONG, offsetof(Ledger, durable), 0, NULL},
    {"max_backlog", T_LONGLONG, offsetof(Ledger, max_backlog), 0, NULL},
    {"checkpoint_every", T_LONGLONG, offsetof(Ledger, checkpoint_every), 0, NULL},
    {"segment_limit", T_LONGLONG, offsetof(Ledger, segment_limit), 0, NULL},
    {"segment_bytes", T_LONGLONG, offsetof(Ledger, segment_bytes), 0, NULL},
    {"segment_records", T_LONGLONG, offsetof(Ledger, segment_records), 0, NULL},
    {"since_checkpoint", T_LONGLONG, offsetof(Ledger, since_checkpoint), 0, NULL},
    {"open", T_BOOL, offsetof(Ledger, open), 0, NULL},
    /* (T_OBJECT: None before __init__) */
    {"queue", T_OBJECT, offsetof(Ledger, queue), READONLY, NULL},
    {"chain", T_OBJECT, offsetof(Ledger, chain), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef ledger_getset[] = {
    {"due", (getter)ledger_get_due, NULL, NULL, NULL},
    {"pending", (getter)ledger_get_pending, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject LedgerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway.audit._seal.Ledger",
    .tp_basicsize = sizeof(Ledger),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "gateway.audit.ledger.Ledger, compiled.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)ledger_init,
    .tp_dealloc = (destructor)ledger_dealloc,
    .tp_traverse = (traverseproc)ledger_traverse,
    .tp_clear = (inquiry)ledger_clear,
    .tp_methods = ledger_methods,
    .tp_members = ledger_members,
    .tp_getset = ledger_getset,
};

/* write_lines(fd, records, skip) -> (written, errno): FileSink.write's loop, compiled:
 * the lines of `records` (Sealed tuples, the line bytes at index 2) written to `fd` in
 * order with writev (IOV_MAX at a time, never joined), from byte `skip` of them on (the
 * rest of a write cut short before). A short write goes on where it stopped; EINTR is
 * retried. Returns the bytes this call wrote and 0, or, when a write fails, the bytes
 * written before it and its errno: the caller knows exactly where to resume. The lines
 * are held for the call, which writes without the GIL. */
/* Step `iov[*at:count]` past `bytes` written: whole entries left behind, the next one
 * trimmed at its front. */
static void
iov_advance(struct iovec *iov, Py_ssize_t count, Py_ssize_t *at, size_t bytes)
{
    while (*at < count && bytes >= iov[*at].iov_len) {
        bytes -= iov[*at].iov_len;
        (*at)++;
    }
    if (*at < count && bytes > 0) {
        iov[*at].iov_base = (char *)iov[*at].iov_base + bytes;
        iov[*at].iov_len -= bytes;
    }
}

static PyObject *
write_lines(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3 || !PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "write_lines(fd, records: list, skip)");
        return NULL;
    }
    const int fd = PyObject_AsFileDescriptor(args[0]);
    if (fd < 0)
        return NULL;
    Py_ssize_t skip = PyLong_AsSsize_t(args[2]);
    if (skip == -1 && PyErr_Occurred())
        return NULL;
    if (skip < 0) {
        PyErr_SetString(PyExc_ValueError, "write_lines: skip < 0");
        return NULL;
    }
    const Py_ssize_t n = PyList_GET_SIZE(args[1]);
    PyObject **held = PyMem_Malloc(sizeof(PyObject *) * (size_t)(n > 0 ? n : 1));
    struct iovec *iov = PyMem_Malloc(sizeof(struct iovec) * (size_t)(n > 0 ? n : 1));
    if (held == NULL || iov == NULL) {
        PyMem_Free(held);
        PyMem_Free(iov);
        return PyErr_NoMemory();
    }
    Py_ssize_t count = 0, total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(args[1], i);
        PyObject *line = PyTuple_Check(item) && PyTuple_GET_SIZE(item) >= 3
                             ? PyTuple_GET_ITEM(item, 2) : NULL;
        if (line == NULL || !PyBytes_Check(line)) {
            for (Py_ssize_t k = 0; k < count; k++)
                Py_DECREF(held[k]);
            PyMem_Free(held);
            PyMem_Free(iov);
            PyErr_SetString(PyExc_TypeError, "write_lines: records are Sealed tuples");
            return NULL;
        }
        held[count] = Py_NewRef(line);
        iov[count].iov_base = PyBytes_AS_STRING(line);
        iov[count].iov_len = (size_t)PyBytes_GET_SIZE(line);
        total += PyBytes_GET_SIZE(line);
        count++;
    }
    if (skip > total)
        skip = total;
    Py_ssize_t at = 0;
    iov_advance(iov, count, &at, (size_t)skip); /* over the bytes written before */
    Py_ssize_t written = 0;
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    while (at < count) {
        const int chunk = count - at > IOV_MAX ? IOV_MAX : (int)(count - at);
        const ssize_t w = writev(fd, iov + at, chunk);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            err = errno;
            break;
        }
        written += w;
        iov_advance(iov, count, &at, (size_t)w);
        if (w == 0 && chunk > 0) { /* nothing taken, no error: do not spin */
            err = EIO;
            break;
        }
    }
    Py_END_ALLOW_THREADS
    for (Py_ssize_t k = 0; k < count; k++)
        Py_DECREF(held[k]);
    PyMem_Free(held);
    PyMem_Free(iov);
    return Py_BuildValue("(ni)", written, err);
}

static PyMethodDef methods[] = {
    {"seal", seal, METH_VARARGS,
     "seal(chunks, picks, seq, prev, ts, values, sha256) -> (line, digest, ts) | None"},
    {"write_lines", (PyCFunction)(void (*)(void))write_lines, METH_FASTCALL,
     "write_lines(fd, records, skip) -> (bytes written, errno or 0)"},
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
    if (str_seq == NULL) {
        str_seq = PyUnicode_InternFromString("seq");
        str_head = PyUnicode_InternFromString("head");
        str_parts = PyUnicode_InternFromString("parts");
        str_instance = PyUnicode_InternFromString("instance");
        str_statement = PyUnicode_InternFromString("statement");
        str_allowed = PyUnicode_InternFromString("allowed");
        str_statements = PyUnicode_InternFromString("statements");
        str_rows = PyUnicode_InternFromString("rows");
        empty_tuple = PyTuple_New(0);
        if (str_seq == NULL || str_head == NULL || str_parts == NULL || str_instance == NULL ||
                str_statement == NULL || str_allowed == NULL || str_statements == NULL ||
                str_rows == NULL || empty_tuple == NULL)
            return NULL;
    }
    if (PyType_Ready(&LedgerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && (PyModule_AddObjectRef(m, "openssl_sha256",
                                            sha_init != NULL ? Py_True : Py_False) < 0 ||
                      PyModule_AddObjectRef(m, "Ledger", (PyObject *)&LedgerType) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
