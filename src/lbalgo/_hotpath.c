/* lbalgo._hotpath: the C accelerator of a request's hot path (pick, release, a lease's exit).
 *
 * Every piece mirrors pure-Python code that stays and runs where this module is missing
 * (no compiler, LBALGO_PURE_PYTHON=1):
 *
 *   Count      an endless counter iterator: next() returns the count before the step, as the
 *              range(sys.maxsize) iterator of lbalgo._counter does, and __length_hint__ the
 *              steps left; C code reads its value directly.
 *   Tally      lbalgo._counter.PyTally's picks / ends / voided counts and their rules.
 *   SlotBase   a Tally with the two fields a release reads besides the counts (backend,
 *              notify): the C base of lbalgo._slot.Slot.
 *   Lease      the core of lbalgo.Lease (lbalgo._lease.PyLease in C): exactly-once release.
 *   FastMethod a method descriptor that runs one fast path in C and calls the pure-Python
 *              method it wraps for every other case (bad input included), so errors,
 *              messages and slow paths are the pure code's own.
 *
 * Thread safety rests on the GIL: each fast path runs from its first read to its last write
 * without calling back into Python code that could release the GIL (attribute reads of plain
 * instance attributes, dict / list / frozenset lookups of str keys and default-hashed
 * objects, and the zip / cycle / map chain of the SWRR stream, all C), so a count step, an
 * exactly-once token pop and a read-then-step are atomic with respect to other threads, as
 * a single next() on a range iterator is in the pure code. docs/concurrency.md says what
 * free-threaded CPython would need instead. The module is single-phase: on a free-threaded
 * build CPython turns the GIL back on when it is imported.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#ifdef _WIN32
#include <winsock2.h>
#include <ws2tcpip.h>
#ifdef _MSC_VER
#pragma comment(lib, "ws2_32") /* inet_pton; Python's socket module has started Winsock */
#endif
#else
#include <arpa/inet.h>
#endif

/* names read on the hot paths, interned once at import */
static PyObject *str_slots, *str_stream, *str_end_lease, *str_table, *str_fast, *str_blocked;
static PyObject *str_key, *str_notify, *str_end;

static int
no_arguments(const char *name, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwds != NULL && PyDict_GET_SIZE(kwds) != 0)) {
        PyErr_Format(PyExc_TypeError, "%s() takes no arguments", name);
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Count                                                                                    */

typedef struct {
    PyObject_HEAD
    Py_ssize_t n; /* steps taken; never above PY_SSIZE_T_MAX (lbalgo._counter.ORIGIN) */
} CountObject;

static PyTypeObject CountType;

static PyObject *
count_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (no_arguments("Count", args, kwds) < 0) {
        return NULL;
    }
    CountObject *self = (CountObject *)type->tp_alloc(type, 0);
    if (self != NULL) {
        self->n = 0;
    }
    return (PyObject *)self;
}

static PyObject *
count_next(CountObject *self)
{
    /* like range(ORIGIN)'s iterator: exhausted after ORIGIN steps (centuries away) */
    if (self->n == PY_SSIZE_T_MAX) {
        return NULL;
    }
    PyObject *value = PyLong_FromSsize_t(self->n);
    if (value != NULL) {
        self->n++; /* only a step that returned its number counts */
    }
    return value;
}

static PyObject *
count_length_hint(CountObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromSsize_t(PY_SSIZE_T_MAX - self->n);
}

static PyObject *
count_repr(CountObject *self)
{
    return PyUnicode_FromFormat("<Count %zd>", self->n);
}

static PyMethodDef count_methods[] = {
    {"__length_hint__", (PyCFunction)count_length_hint, METH_NOARGS,
     "ORIGIN minus the count: the steps left (what lbalgo._counter.steps_left reads)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CountType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "lbalgo._hotpath.Count",
    .tp_basicsize = sizeof(CountObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Count()\n--\n\nA count at 0: next() adds one and returns the count before.",
    .tp_new = count_new,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)count_next,
    .tp_methods = count_methods,
    .tp_repr = (reprfunc)count_repr,
};

static CountObject *
new_count(void)
{
    CountObject *count = PyObject_New(CountObject, &CountType);
    if (count != NULL) {
        count->n = 0;
    }
    return count;
}

/* ---------------------------------------------------------------------------------------- */
/* Tally                                                                                    */

typedef struct {
    PyObject_HEAD
    CountObject *picks; /* never NULL after tp_new, never replaced: Counts hold no objects, so */
    CountObject *ends;  /* they cannot take part in a reference cycle and GC need not see them */
    Py_ssize_t voided;  /* ends that found no open pick; 0 <= voided <= ends */
} TallyObject;

static PyTypeObject TallyType;
static PyTypeObject SlotBaseType;

static PyObject *
tally_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    /* subclasses (Slot) take their own __init__ arguments; Tally itself takes none */
    if (type == &TallyType && no_arguments("Tally", args, kwds) < 0) {
        return NULL;
    }
    TallyObject *self = (TallyObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->picks = new_count();
    self->ends = new_count();
    self->voided = 0;
    if (self->picks == NULL || self->ends == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void
tally_dealloc(TallyObject *self)
{
    Py_XDECREF(self->picks);
    Py_XDECREF(self->ends);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* One release (lbalgo._counter.PyTally.end): 1 if counted, 0 if no pick was left open (the
 * excess is voided), -1 with StopIteration if the count is exhausted (as next() on the
 * pure count would raise). Atomic under the GIL: no Python code runs in it. */
static int
tally_end_c(TallyObject *self)
{
    Py_ssize_t ends = self->ends->n;
    if (ends == PY_SSIZE_T_MAX) {
        PyErr_SetNone(PyExc_StopIteration);
        return -1;
    }
    self->ends->n = ends + 1;
    /* end number `ends` is within the open count when ends - voided < picks; written as a
     * difference of non-negative numbers, which cannot overflow */
    if (ends - self->voided < self->picks->n) {
        return 1;
    }
    /* the rare path: void the ends beyond the picks (computed from the totals; the pure code
     * needs a lock for that, here the GIL holds the three still) */
    Py_ssize_t excess = (ends + 1) - self->voided - self->picks->n;
    if (excess > 0) {
        self->voided += excess;
    }
    return excess <= 0;
}

static PyObject *
tally_end(TallyObject *self, PyObject *Py_UNUSED(ignored))
{
    int counted = tally_end_c(self);
    if (counted < 0) {
        return NULL;
    }
    return PyBool_FromLong(counted);
}

static PyObject *
tally_void_excess(TallyObject *self, PyObject *Py_UNUSED(ignored))
{
    Py_ssize_t excess = self->ends->n - self->voided - self->picks->n;
    if (excess > 0) {
        self->voided += excess;
    }
    return PyBool_FromLong(excess <= 0);
}

static PyObject *
tally_check(TallyObject *self, PyObject *Py_UNUSED(ignored))
{
    Py_ssize_t picks = self->picks->n, ends = self->ends->n, voided = self->voided;
    if (!(0 <= voided && voided <= ends && ends - voided <= picks)) {
        PyObject *detail = Py_BuildValue("(nnn)", picks, ends, voided);
        if (detail != NULL) {
            PyErr_SetObject(PyExc_AssertionError, detail);
            Py_DECREF(detail);
        }
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
tally_get_open(TallyObject *self, void *Py_UNUSED(closure))
{
    Py_ssize_t opened = self->picks->n - (self->ends->n - self->voided);
    return PyLong_FromSsize_t(opened > 0 ? opened : 0);
}

static PyObject *
tally_get_picked(TallyObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->picks->n);
}

static PyObject *
tally_get_limit(TallyObject *self, void *Py_UNUSED(closure))
{
    /* ORIGIN + voided, as PyTally keeps it: above a machine word once anything is voided */
    PyObject *origin = PyLong_FromSsize_t(PY_SSIZE_T_MAX);
    PyObject *voided = PyLong_FromSsize_t(self->voided);
    PyObject *limit = NULL;
    if (origin != NULL && voided != NULL) {
        limit = PyNumber_Add(origin, voided);
    }
    Py_XDECREF(origin);
    Py_XDECREF(voided);
    return limit;
}

static PyMethodDef tally_methods[] = {
    {"end", (PyCFunction)tally_end, METH_NOARGS,
     "Count one release; False when no pick was left open (then it counts nothing). O(1)."},
    {"void_excess", (PyCFunction)tally_void_excess, METH_NOARGS,
     "Void the ends beyond the picks; True if none were. O(1)."},
    {"_check", (PyCFunction)tally_check, METH_NOARGS,
     "Assert 0 <= voided <= ends and ends - voided <= picks."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef tally_members[] = {
    {"picks", T_OBJECT_EX, offsetof(TallyObject, picks), READONLY, "The picks' count."},
    {"ends", T_OBJECT_EX, offsetof(TallyObject, ends), READONLY, "The releases' count."},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef tally_getset[] = {
    {"open", (getter)tally_get_open, NULL, "Picks not yet released, never below 0.", NULL},
    {"picked", (getter)tally_get_picked, NULL, "Picks so far.", NULL},
    {"limit", (getter)tally_get_limit, NULL, "ORIGIN plus the voided ends.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject TallyType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "lbalgo._hotpath.Tally",
    .tp_basicsize = sizeof(TallyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Tally()\n--\n\nPicks and ends of one backend (lbalgo._counter.PyTally in C).",
    .tp_new = tally_new,
    .tp_dealloc = (destructor)tally_dealloc,
    .tp_methods = tally_methods,
    .tp_members = tally_members,
    .tp_getset = tally_getset,
};

/* ---------------------------------------------------------------------------------------- */
/* SlotBase: a Tally with what a release reads besides the counts                           */

typedef struct {
    TallyObject tally;
    PyObject *backend; /* the Backend a pick of this slot returns */
    char notify;       /* a release must reach the scheduler (see lbalgo._slot.Slot) */
} SlotBaseObject;

#define SlotBase_Check(op) PyObject_TypeCheck(op, &SlotBaseType)

static int
slotbase_traverse(SlotBaseObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->backend);
    return 0;
}

static int
slotbase_clear(SlotBaseObject *self)
{
    Py_CLEAR(self->backend);
    return 0;
}

static void
slotbase_dealloc(SlotBaseObject *self)
{
    PyObject_GC_UnTrack(self);
    Py_CLEAR(self->backend);
    tally_dealloc((TallyObject *)self);
}

static PyMemberDef slotbase_members[] = {
    {"backend", T_OBJECT_EX, offsetof(SlotBaseObject, backend), 0, "The slot's Backend."},
    {"notify", T_BOOL, offsetof(SlotBaseObject, notify), 0,
     "Whether a release must reach the scheduler under its lock."},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject SlotBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "lbalgo._hotpath.SlotBase",
    .tp_basicsize = sizeof(SlotBaseObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The C base of lbalgo._slot.Slot: a Tally with backend and notify.",
    .tp_base = &TallyType,
    .tp_new = tally_new,
    .tp_dealloc = (destructor)slotbase_dealloc,
    .tp_traverse = (traverseproc)slotbase_traverse,
    .tp_clear = (inquiry)slotbase_clear,
    .tp_members = slotbase_members,
};

/* ---------------------------------------------------------------------------------------- */
/* Lease                                                                                    */

typedef struct {
    PyObject_HEAD
    PyObject *backend;
    PyObject *token; /* the pick's slot until the lease ends, then NULL */
    PyObject *end;   /* end(token, failed): the scheduler counts and hears of the release */
} LeaseObject;

static PyTypeObject LeaseType;

static int
lease_traverse(LeaseObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->backend);
    Py_VISIT(self->token);
    Py_VISIT(self->end);
    return 0;
}

static int
lease_clear(LeaseObject *self)
{
    Py_CLEAR(self->backend);
    Py_CLEAR(self->token);
    Py_CLEAR(self->end);
    return 0;
}

static void
lease_dealloc(LeaseObject *self)
{
    PyObject_GC_UnTrack(self);
    lease_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
lease_init(LeaseObject *self, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"backend", "token", "end", NULL};
    PyObject *backend, *token, *end;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO:Lease", names, &backend, &token, &end)) {
        return -1;
    }
    Py_INCREF(backend);
    Py_INCREF(token);
    Py_INCREF(end);
    Py_XSETREF(self->backend, backend);
    Py_XSETREF(self->token, token);
    Py_XSETREF(self->end, end);
    return 0;
}

/* A new lease of `type` (lbalgo.Lease) on a pick, without going through __init__. */
static PyObject *
lease_make(PyTypeObject *type, PyObject *backend, PyObject *token, PyObject *end)
{
    LeaseObject *lease = (LeaseObject *)type->tp_alloc(type, 0);
    if (lease == NULL) {
        return NULL;
    }
    Py_INCREF(backend);
    Py_INCREF(token);
    Py_INCREF(end);
    lease->backend = backend;
    lease->token = token;
    lease->end = end;
    return (PyObject *)lease;
}

/* Call end(token, failed), keeping `end` alive through the call. */
static int
lease_call_end(LeaseObject *self, PyObject *token, int failed)
{
    PyObject *end = self->end;
    if (end == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "lease was never initialized");
        return -1;
    }
    Py_INCREF(end);
    PyObject *result = PyObject_CallFunctionObjArgs(end, token, failed ? Py_True : Py_False, NULL);
    Py_DECREF(end);
    if (result == NULL) {
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

/* PyLease.release after the pop: count the release here unless the scheduler must hear of it. */
static int
lease_finish(LeaseObject *self, PyObject *token)
{
    if (SlotBase_Check(token)) {
        if (((SlotBaseObject *)token)->notify) {
            return lease_call_end(self, token, 0);
        }
        return tally_end_c((TallyObject *)token) < 0 ? -1 : 0;
    }
    /* any other token: the same steps through Python attributes */
    PyObject *notify = PyObject_GetAttr(token, str_notify);
    if (notify == NULL) {
        return -1;
    }
    int truth = PyObject_IsTrue(notify);
    Py_DECREF(notify);
    if (truth < 0) {
        return -1;
    }
    if (truth) {
        return lease_call_end(self, token, 0);
    }
    PyObject *result = PyObject_CallMethodNoArgs(token, str_end);
    if (result == NULL) {
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

/* Take the token: exactly once, because nothing between the read and the write can let
 * another thread run (the GIL is held, no Python code is called). */
static PyObject *
lease_pop(LeaseObject *self)
{
    PyObject *token = self->token;
    self->token = NULL;
    return token; /* a new reference, or NULL when already released */
}

static PyObject *
lease_release(LeaseObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *token = lease_pop(self);
    if (token == NULL) {
        Py_RETURN_NONE;
    }
    int rc = lease_finish(self, token);
    Py_DECREF(token);
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
lease_fail(LeaseObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *token = lease_pop(self);
    if (token == NULL) {
        Py_RETURN_NONE;
    }
    int rc = lease_call_end(self, token, 1);
    Py_DECREF(token);
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
lease_enter(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return Py_NewRef(self);
}

static PyObject *
lease_exit(LeaseObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "__exit__() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    return lease_release(self, NULL); /* None: an exception in the block propagates */
}

static PyObject *
lease_get_released(LeaseObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->token == NULL);
}

static PyMethodDef lease_methods[] = {
    {"release", (PyCFunction)lease_release, METH_NOARGS, "End the lease normally (idempotent)."},
    {"fail", (PyCFunction)lease_fail, METH_NOARGS,
     "Report a failure of this backend to passive health, then release (idempotent)."},
    {"__enter__", (PyCFunction)lease_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))lease_exit, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef lease_members[] = {
    {"backend", T_OBJECT_EX, offsetof(LeaseObject, backend), 0,
     "The backend this lease holds a connection slot on."},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef lease_getset[] = {
    {"released", (getter)lease_get_released, NULL,
     "Whether the lease has ended (released or failed).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject LeaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "lbalgo._hotpath.Lease",
    .tp_basicsize = sizeof(LeaseObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Lease(backend, token, end)\n--\n\nThe core of lbalgo.Lease (lbalgo._lease.PyLease"
              " in C).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)lease_init,
    .tp_dealloc = (destructor)lease_dealloc,
    .tp_traverse = (traverseproc)lease_traverse,
    .tp_clear = (inquiry)lease_clear,
    .tp_methods = lease_methods,
    .tp_members = lease_members,
    .tp_getset = lease_getset,
};

/* ---------------------------------------------------------------------------------------- */
/* murmur3 (x86, 32 bits): mmh3.hash, the client hash of SourceIPHash's HASH_VERSION 1       */

static uint32_t
rotl32(uint32_t x, int r)
{
    return (x << r) | (x >> (32 - r));
}

static uint32_t
murmur3_32(const unsigned char *data, Py_ssize_t len, uint32_t seed)
{
    const uint32_t c1 = 0xcc9e2d51u, c2 = 0x1b873593u;
    uint32_t h = seed, k;
    Py_ssize_t blocks = len / 4, i;
    for (i = 0; i < blocks; i++) {
        const unsigned char *p = data + 4 * i;
        /* little-endian on every host, as mmh3 reads its blocks */
        k = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
        k *= c1;
        k = rotl32(k, 15);
        k *= c2;
        h ^= k;
        h = rotl32(h, 13);
        h = h * 5 + 0xe6546b64u;
    }
    const unsigned char *tail = data + 4 * blocks;
    k = 0;
    switch (len & 3) {
    case 3:
        k ^= (uint32_t)tail[2] << 16;
        /* fall through */
    case 2:
        k ^= (uint32_t)tail[1] << 8;
        /* fall through */
    case 1:
        k ^= tail[0];
        k *= c1;
        k = rotl32(k, 15);
        k *= c2;
        h ^= k;
    }
    h ^= (uint32_t)len; /* mmh3 takes the length modulo 2**32 too */
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

/* mmh3.hash's signed result, without an implementation-defined conversion */
static int64_t
signed32(uint32_t h)
{
    return h >= 0x80000000u ? (int64_t)h - ((int64_t)1 << 32) : (int64_t)h;
}

static PyObject *
py_murmur3_32(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_buffer data;
    unsigned int seed;
    if (!PyArg_ParseTuple(args, "y*I:murmur3_32", &data, &seed)) {
        return NULL;
    }
    uint32_t h = murmur3_32((const unsigned char *)data.buf, data.len, (uint32_t)seed);
    PyBuffer_Release(&data);
    return PyLong_FromLongLong(signed32(h));
}

/* ---------------------------------------------------------------------------------------- */
/* FastMethod: one fast path in C, the wrapped pure-Python method for everything else        */

enum {
    KIND_RELEASE,         /* BaseScheduler.release */
    KIND_ROTATION_PICK,   /* SmoothWeightedRoundRobin.pick */
    KIND_ROTATION_LEASE,  /* SmoothWeightedRoundRobin.connection */
    KIND_HASH_PICK,       /* SourceIPHash.pick */
    KIND_HASH_LEASE,      /* SourceIPHash.connection */
};

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    int kind;
    PyObject *fallback;    /* the pure-Python method (a function taking self first) */
    PyObject *lease_type;  /* lbalgo.Lease, for the connection kinds */
    uint32_t seed;         /* the hash kinds: client seed and table size */
    Py_ssize_t size;
} FastMethodObject;

static PyTypeObject FastMethodType;

static PyObject *
fallback(FastMethodObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    return PyObject_Vectorcall(self->fallback, args, nargsf, kwnames);
}

/* An attribute read on the fast path; NULL with the error cleared when it is an Exception
 * (the pure code's slow path then meets and reports it), NULL with the error set otherwise. */
static PyObject *
get_or_clear(PyObject *obj, PyObject *name)
{
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL && PyErr_ExceptionMatches(PyExc_Exception)) {
        PyErr_Clear();
    }
    return value;
}

/* `exclude` values the pure code's `not exclude` takes as nothing excluded, recognized
 * without running Python code (anything else: the pure code decides) */
static int
is_plainly_empty(PyObject *v)
{
    return v == Py_None || v == Py_False ||
           (PyTuple_CheckExact(v) && PyTuple_GET_SIZE(v) == 0) ||
           (PyList_CheckExact(v) && PyList_GET_SIZE(v) == 0) ||
           (PyAnySet_CheckExact(v) && PySet_GET_SIZE(v) == 0) ||
           (PyDict_CheckExact(v) && PyDict_GET_SIZE(v) == 0) ||
           (PyUnicode_CheckExact(v) && PyUnicode_GET_LENGTH(v) == 0);
}

/* pick(self, client=None, *, exclude=()): 1 with *client set (borrowed, NULL if absent)
 * when the call is one the fast path may serve, else 0 */
static int
plain_pick_call(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, PyObject **client)
{
    if (nargs < 1 || nargs > 2) {
        return 0;
    }
    *client = nargs == 2 ? args[1] : NULL;
    if (kwnames == NULL) {
        return 1;
    }
    Py_ssize_t nkw = PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        PyObject *value = args[nargs + i];
        if (PyUnicode_CompareWithASCIIString(name, "exclude") == 0) {
            if (!is_plainly_empty(value)) {
                return 0;
            }
        }
        else if (PyUnicode_CompareWithASCIIString(name, "client") == 0 && *client == NULL) {
            *client = value;
        }
        else {
            return 0;
        }
    }
    return 1;
}

/* BaseScheduler.release's fast path: the very Backend a pick returned, no failure, a slot
 * that needs no notification: count the end, lock-free. */
static PyObject *
fast_release(FastMethodObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 2) {
        return fallback(self, args, nargsf, kwnames);
    }
    if (kwnames != NULL) {
        /* release(b, failed=False) is the plain case too; anything else is the pure code's */
        if (PyTuple_GET_SIZE(kwnames) != 1 || args[2] != Py_False ||
            PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "failed") != 0) {
            return fallback(self, args, nargsf, kwnames);
        }
    }
    PyObject *sched = args[0], *backend = args[1];
    PyObject *slots = get_or_clear(sched, str_slots);
    if (slots == NULL) {
        return PyErr_Occurred() ? NULL : fallback(self, args, nargsf, kwnames);
    }
    PyObject *key = get_or_clear(backend, str_key);
    if (key == NULL) {
        Py_DECREF(slots);
        return PyErr_Occurred() ? NULL : fallback(self, args, nargsf, kwnames);
    }
    PyObject *slot = NULL;
    if (PyDict_CheckExact(slots) && PyUnicode_CheckExact(key)) {
        /* a str key: its hash and comparisons run no Python code */
        slot = PyDict_GetItemWithError(slots, key); /* borrowed */
    }
    Py_DECREF(key);
    if (slot == NULL || !SlotBase_Check(slot) || ((SlotBaseObject *)slot)->backend != backend ||
        ((SlotBaseObject *)slot)->notify) {
        Py_DECREF(slots);
        if (PyErr_Occurred()) {
            return NULL;
        }
        return fallback(self, args, nargsf, kwnames);
    }
    /* `slots` still holds `slot`: nothing ran since the lookup */
    int counted = tally_end_c((TallyObject *)slot);
    Py_DECREF(slots);
    if (counted < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* One step of SWRR's stream: a new reference to the (slot, backend, count) item, or NULL
 * with *done = 1 when it ran dry (no error), or NULL with an error set. */
static PyObject *
rotation_next(PyObject *sched, int *done)
{
    *done = 0;
    PyObject *stream = PyObject_GetAttr(sched, str_stream);
    if (stream == NULL) {
        return NULL;
    }
    iternextfunc iternext = Py_TYPE(stream)->tp_iternext;
    if (iternext == NULL) {
        Py_DECREF(stream);
        *done = 1; /* not an iterator: the pure code reports it */
        return NULL;
    }
    PyObject *item = iternext(stream);
    Py_DECREF(stream);
    if (item == NULL) {
        if (PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_StopIteration)) {
                return NULL;
            }
            PyErr_Clear();
        }
        *done = 1;
        return NULL;
    }
    if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) < 2) {
        Py_DECREF(item);
        PyErr_SetString(PyExc_TypeError, "the rotation's stream must yield (slot, backend, ...)");
        return NULL;
    }
    return item;
}

static PyObject *
fast_rotation(FastMethodObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    PyObject *client;
    if (!plain_pick_call(args, PyVectorcall_NARGS(nargsf), kwnames, &client)) {
        return fallback(self, args, nargsf, kwnames);
    }
    int done;
    PyObject *item = rotation_next(args[0], &done);
    if (item == NULL) {
        /* dry: the pure method tries the stream again (it stays dry, or a refill landed
         * meanwhile, which it may draw from as well) and then takes the lock */
        return done ? fallback(self, args, nargsf, kwnames) : NULL;
    }
    PyObject *slot = PyTuple_GET_ITEM(item, 0), *backend = PyTuple_GET_ITEM(item, 1);
    PyObject *result;
    if (self->kind == KIND_ROTATION_PICK) {
        result = Py_NewRef(backend);
    }
    else {
        PyObject *end = PyObject_GetAttr(args[0], str_end_lease);
        result = end == NULL ? NULL
                             : lease_make((PyTypeObject *)self->lease_type, backend, slot, end);
        Py_XDECREF(end);
    }
    Py_DECREF(item);
    return result;
}

/* SourceIPHash's fast path: an IPv4 string, the table in place, nothing blocking. Every
 * other case (another address form, a blocked owner, an option in play) is the pure code's,
 * called before anything is counted. */
static PyObject *
fast_hash(FastMethodObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    PyObject *client;
    if (!plain_pick_call(args, PyVectorcall_NARGS(nargsf), kwnames, &client) ||
        client == NULL || !PyUnicode_Check(client)) {
        return fallback(self, args, nargsf, kwnames);
    }
    PyObject *sched = args[0];
    /* the pure code's order: the table read once, then _fast */
    PyObject *table = PyObject_GetAttr(sched, str_table);
    if (table == NULL) {
        return NULL;
    }
    PyObject *fast = PyObject_GetAttr(sched, str_fast);
    if (fast == NULL) {
        Py_DECREF(table);
        return NULL;
    }
    int usable = fast == Py_True && PyTuple_CheckExact(table) && PyTuple_GET_SIZE(table) == 2;
    Py_DECREF(fast);
    Py_ssize_t size;
    const char *text = usable ? PyUnicode_AsUTF8AndSize(client, &size) : NULL;
    unsigned char packed[4];
    if (text == NULL || (Py_ssize_t)strlen(text) != size || inet_pton(AF_INET, text, packed) != 1) {
        /* socket.inet_pton refuses it too (an embedded NUL is its ValueError) */
        Py_DECREF(table);
        if (usable && text == NULL) {
            PyErr_Clear(); /* a str that cannot be UTF-8 (a lone surrogate): the pure code's */
        }
        return fallback(self, args, nargsf, kwnames);
    }
    int64_t cell = signed32(murmur3_32(packed, 4, self->seed)) % self->size;
    if (cell < 0) {
        cell += self->size; /* Python's modulo */
    }
    PyObject *owner = PySequence_GetItem(PyTuple_GET_ITEM(table, 0), (Py_ssize_t)cell);
    PyObject *slot = owner == NULL ? NULL : PyObject_GetItem(PyTuple_GET_ITEM(table, 1), owner);
    Py_XDECREF(owner);
    Py_DECREF(table);
    if (slot == NULL) {
        return NULL;
    }
    PyObject *blocked = PyObject_GetAttr(sched, str_blocked);
    int in_blocked = blocked == NULL ? -1 : PySequence_Contains(blocked, slot);
    Py_XDECREF(blocked);
    if (in_blocked != 0 || !SlotBase_Check(slot)) {
        Py_DECREF(slot);
        return in_blocked < 0 ? NULL : fallback(self, args, nargsf, kwnames);
    }
    CountObject *picks = ((TallyObject *)slot)->picks;
    if (picks->n == PY_SSIZE_T_MAX) {
        Py_DECREF(slot);
        PyErr_SetNone(PyExc_StopIteration); /* next() on the exhausted pure count */
        return NULL;
    }
    picks->n++;
    PyObject *backend = ((SlotBaseObject *)slot)->backend;
    PyObject *result;
    if (backend == NULL) {
        PyErr_SetString(PyExc_AttributeError, "backend");
        result = NULL;
    }
    else if (self->kind == KIND_HASH_PICK) {
        result = Py_NewRef(backend);
    }
    else {
        PyObject *end = PyObject_GetAttr(sched, str_end_lease);
        result = end == NULL ? NULL
                             : lease_make((PyTypeObject *)self->lease_type, backend, slot, end);
        Py_XDECREF(end);
    }
    Py_DECREF(slot);
    return result;
}

static int
fastmethod_traverse(FastMethodObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->fallback);
    Py_VISIT(self->lease_type);
    return 0;
}

static int
fastmethod_clear(FastMethodObject *self)
{
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->lease_type);
    return 0;
}

static void
fastmethod_dealloc(FastMethodObject *self)
{
    PyObject_GC_UnTrack(self);
    fastmethod_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
fastmethod_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    FastMethodObject *self = (FastMethodObject *)callable;
    if (self->fallback == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "fast method was cleared");
        return NULL;
    }
    switch (self->kind) {
    case KIND_RELEASE:
        return fast_release(self, args, nargsf, kwnames);
    case KIND_ROTATION_PICK:
    case KIND_ROTATION_LEASE:
        return fast_rotation(self, args, nargsf, kwnames);
    default:
        return fast_hash(self, args, nargsf, kwnames);
    }
}

static PyObject *
fastmethod_get(PyObject *self, PyObject *obj, PyObject *Py_UNUSED(type))
{
    if (obj == NULL || obj == Py_None) {
        return Py_NewRef(self); /* looked up on the class */
    }
    return PyMethod_New(self, obj);
}

/* introspection (help(), inspect.signature through __wrapped__, doctest) sees the pure method */
static PyObject *
fastmethod_getattro(PyObject *self, PyObject *name)
{
    PyObject *value = PyObject_GenericGetAttr(self, name);
    if (value != NULL || !PyErr_ExceptionMatches(PyExc_AttributeError)) {
        return value;
    }
    PyErr_Clear();
    PyObject *wrapped = ((FastMethodObject *)self)->fallback;
    if (wrapped == NULL) { /* cleared by the garbage collector */
        PyErr_SetObject(PyExc_AttributeError, name);
        return NULL;
    }
    return PyObject_GetAttr(wrapped, name);
}

static PyObject *
fastmethod_get_doc(FastMethodObject *self, void *Py_UNUSED(closure))
{
    if (self->fallback == NULL) {
        Py_RETURN_NONE;
    }
    return PyObject_GetAttrString(self->fallback, "__doc__");
}

static PyObject *
fastmethod_repr(FastMethodObject *self)
{
    if (self->fallback == NULL) {
        return PyUnicode_FromString("<C fast path (cleared)>");
    }
    return PyUnicode_FromFormat("<C fast path of %R>", self->fallback);
}

static PyMemberDef fastmethod_members[] = {
    {"__wrapped__", T_OBJECT_EX, offsetof(FastMethodObject, fallback), READONLY,
     "The pure-Python method this fast path mirrors and falls back to."},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef fastmethod_getset[] = {
    {"__doc__", (getter)fastmethod_get_doc, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject FastMethodType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "lbalgo._hotpath.FastMethod",
    .tp_basicsize = sizeof(FastMethodObject),
    /* METHOD_DESCRIPTOR: `sched.pick()` calls it with self first, building no bound method */
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL |
                Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_doc = "A method's C fast path; every other case runs the pure-Python method.",
    .tp_vectorcall_offset = offsetof(FastMethodObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_descr_get = fastmethod_get,
    .tp_getattro = fastmethod_getattro,
    .tp_dealloc = (destructor)fastmethod_dealloc,
    .tp_traverse = (traverseproc)fastmethod_traverse,
    .tp_clear = (inquiry)fastmethod_clear,
    .tp_members = fastmethod_members,
    .tp_getset = fastmethod_getset,
    .tp_repr = (reprfunc)fastmethod_repr,
};

static PyObject *
make_fast(int kind, PyObject *func, PyObject *lease_type, uint32_t seed, Py_ssize_t size)
{
    if (!PyCallable_Check(func)) {
        PyErr_Format(PyExc_TypeError, "func must be callable, got %R", func);
        return NULL;
    }
    if (lease_type != NULL &&
        (!PyType_Check(lease_type) ||
         !PyType_IsSubtype((PyTypeObject *)lease_type, &LeaseType))) {
        PyErr_Format(PyExc_TypeError, "lease must be a subclass of Lease, got %R", lease_type);
        return NULL;
    }
    FastMethodObject *self = PyObject_GC_New(FastMethodObject, &FastMethodType);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = fastmethod_vectorcall;
    self->kind = kind;
    self->fallback = Py_NewRef(func);
    self->lease_type = Py_XNewRef(lease_type);
    self->seed = seed;
    self->size = size;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static PyObject *
py_release_method(PyObject *Py_UNUSED(module), PyObject *func)
{
    return make_fast(KIND_RELEASE, func, NULL, 0, 1);
}

static PyObject *
py_rotation_pick(PyObject *Py_UNUSED(module), PyObject *func)
{
    return make_fast(KIND_ROTATION_PICK, func, NULL, 0, 1);
}

static PyObject *
py_rotation_connection(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *func, *lease;
    if (!PyArg_ParseTuple(args, "OO:rotation_connection", &func, &lease)) {
        return NULL;
    }
    return make_fast(KIND_ROTATION_LEASE, func, lease, 0, 1);
}

static PyObject *
hash_method(PyObject *args, int kind)
{
    PyObject *func, *lease = NULL;
    unsigned int seed;
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "OIn|O", &func, &seed, &size, &lease)) {
        return NULL;
    }
    if (size <= 0) {
        PyErr_Format(PyExc_ValueError, "size must be above 0, got %zd", size);
        return NULL;
    }
    if (kind == KIND_HASH_LEASE && lease == NULL) {
        PyErr_SetString(PyExc_TypeError, "hash_connection needs the lease class");
        return NULL;
    }
    return make_fast(kind, func, kind == KIND_HASH_LEASE ? lease : NULL, (uint32_t)seed, size);
}

static PyObject *
py_hash_pick(PyObject *Py_UNUSED(module), PyObject *args)
{
    return hash_method(args, KIND_HASH_PICK);
}

static PyObject *
py_hash_connection(PyObject *Py_UNUSED(module), PyObject *args)
{
    return hash_method(args, KIND_HASH_LEASE);
}

static PyMethodDef module_methods[] = {
    {"murmur3_32", py_murmur3_32, METH_VARARGS,
     "murmur3_32(data, seed)\n--\n\nmmh3.hash(data, seed): the signed 32-bit murmur3 (x86)."},
    {"release_method", py_release_method, METH_O,
     "release_method(func)\n--\n\nBaseScheduler.release's fast path over func."},
    {"rotation_pick", py_rotation_pick, METH_O,
     "rotation_pick(func)\n--\n\nSmoothWeightedRoundRobin.pick's fast path over func."},
    {"rotation_connection", py_rotation_connection, METH_VARARGS,
     "rotation_connection(func, lease)\n--\n\nSmoothWeightedRoundRobin.connection's fast path."},
    {"hash_pick", py_hash_pick, METH_VARARGS,
     "hash_pick(func, seed, size)\n--\n\nSourceIPHash.pick's fast path over func."},
    {"hash_connection", py_hash_connection, METH_VARARGS,
     "hash_connection(func, seed, size, lease)\n--\n\nSourceIPHash.connection's fast path."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef hotpath_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "lbalgo._hotpath",
    .m_doc = "C fast paths of a request (see lbalgo._fastpath); pure-Python code mirrors each.",
    .m_size = -1,
    .m_methods = module_methods,
};

static int
intern(PyObject **slot, const char *text)
{
    *slot = PyUnicode_InternFromString(text);
    return *slot == NULL ? -1 : 0;
}

PyMODINIT_FUNC
PyInit__hotpath(void)
{
    if (intern(&str_slots, "_slots") < 0 || intern(&str_stream, "_stream") < 0 ||
        intern(&str_end_lease, "_end_lease") < 0 || intern(&str_table, "_table") < 0 ||
        intern(&str_fast, "_fast") < 0 || intern(&str_blocked, "_blocked") < 0 ||
        intern(&str_key, "key") < 0 || intern(&str_notify, "notify") < 0 ||
        intern(&str_end, "end") < 0) {
        return NULL;
    }
    PyTypeObject *types[] = {&CountType, &TallyType, &SlotBaseType, &LeaseType, &FastMethodType};
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        if (PyType_Ready(types[i]) < 0) {
            return NULL;
        }
    }
    PyObject *module = PyModule_Create(&hotpath_module);
    if (module == NULL) {
        return NULL;
    }
    const char *names[] = {"Count", "Tally", "SlotBase", "Lease", "FastMethod"};
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        if (PyModule_AddObjectRef(module, names[i], (PyObject *)types[i]) < 0) {
            Py_DECREF(module);
            return NULL;
        }
    }
    PyObject *origin = PyLong_FromSsize_t(PY_SSIZE_T_MAX);
    if (origin == NULL || PyModule_AddObjectRef(module, "ORIGIN", origin) < 0) {
        Py_XDECREF(origin);
        Py_DECREF(module);
        return NULL;
    }
    Py_DECREF(origin);
    return module;
}
