/*
 * lbalgo._wf2q_c: the hot operations of LocalLedger's WF2Q schedule in C.
 *
 * The type `Schedule` holds the schedule's state in C struct fields that Python sees as
 * attributes (member descriptors, exactly as `__slots__` would give): lbalgo._wf2q's
 * WF2QSchedule derives from it when this module is built, so the pure-Python code of every
 * operation (set_eligible, set_weight, take, forget, the rebuild of the heaps, acquires with
 * an exclude set, _check) reads and writes the very same lists, heaps and ints. Only the
 * two operations of every request are written here: `acquire()` without an exclude set and
 * `release_open()` (with `release()`), line for line the pure-Python ones of
 * lbalgo.local_ledger, on the same objects:
 *
 * - numbers stay Python ints and every step is the C API's int arithmetic
 *   (PyNumber_Add, PyObject_RichCompareBool), so a scale M far beyond 64 bits (an lcm of
 *   weights) is exact here as it is in Python;
 * - heap entries are the same tuples, queued by the same sift rules as heapq's;
 * - the rare steps (rebuilding the heaps, an acquire with an exclude set) call the Python
 *   methods.
 *
 * Hence the same picks, counts and heaps after every sequence of operations, whichever
 * path ran each one (the differential tests run both side by side). No lock: the
 * scheduler's lock serialises ledger calls, and a call here runs no Python code between
 * two of its steps except where noted (the rebuild and the exclude path re-read every
 * field after the call).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

/* where a key's current entry is: lbalgo._wf2q's READY, IDLE, BUSY, PENDING, OUT */
enum { READY = 0, IDLE = 1, BUSY = 2, PENDING = 3, OUT = 4 };

static PyObject *state_obj[5]; /* the ints 0..4 */
static PyObject *str_rebuild;  /* "_rebuild_heaps" */
static PyObject *str_excluding; /* "_acquire_excluding" */

typedef struct {
    PyObject_HEAD
    PyObject *draining;
    PyObject *index;
    PyObject *keys;
    PyObject *load;
    PyObject *unit;
    PyObject *start;
    PyObject *state;
    PyObject *stamp;
    PyObject *ready_heap;
    PyObject *idle_heap;
    PyObject *busy_heap;
    PyObject *busy_wakeups;
    PyObject *scale;
    PyObject *vt;
    PyObject *step;
    PyObject *frac;
    PyObject *rem;
    PyObject *weight;
    PyObject *total;
    PyObject *cap;
    Py_ssize_t pending;
    Py_ssize_t pushes;
    Py_ssize_t limit;
} Schedule;

/* ---- small helpers ------------------------------------------------------------------- */

/* A field that must be a list: borrowed, or NULL with TypeError (a field deleted or
 * replaced by something else is an error, never undefined behaviour). */
static PyObject *
list_field(PyObject *value, const char *name)
{
    if (value == NULL || !PyList_CheckExact(value)) {
        PyErr_Format(PyExc_TypeError, "WF2QSchedule.%s must be a list", name);
        return NULL;
    }
    return value;
}

static PyObject *
int_field(PyObject *value, const char *name)
{
    if (value == NULL || !PyLong_Check(value)) {
        PyErr_Format(PyExc_TypeError, "WF2QSchedule.%s must be an int", name);
        return NULL;
    }
    return value;
}

/* list[i], borrowed; IndexError when out of range */
static PyObject *
item(PyObject *list, Py_ssize_t i)
{
    if ((size_t)i >= (size_t)PyList_GET_SIZE(list)) {
        PyErr_SetString(PyExc_IndexError, "list index out of range");
        return NULL;
    }
    return PyList_GET_ITEM(list, i);
}

/* list[i] = value (a new reference, always consumed) */
static int
set_item(PyObject *list, Py_ssize_t i, PyObject *value)
{
    if (value == NULL) {
        return -1;
    }
    if ((size_t)i >= (size_t)PyList_GET_SIZE(list)) {
        Py_DECREF(value);
        PyErr_SetString(PyExc_IndexError, "list assignment index out of range");
        return -1;
    }
    PyObject *old = PyList_GET_ITEM(list, i);
    PyList_SET_ITEM(list, i, value);
    Py_DECREF(old);
    return 0;
}

/* tuple[i] of a heap entry as a position: borrowed or -1 with an error */
static Py_ssize_t
entry_pos(PyObject *entry, Py_ssize_t at)
{
    if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) <= at) {
        PyErr_SetString(PyExc_TypeError, "WF2QSchedule heap entries must be tuples");
        return -1;
    }
    return PyLong_AsSsize_t(PyTuple_GET_ITEM(entry, at));
}

static PyObject *
entry_item(PyObject *entry, Py_ssize_t at)
{
    if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) <= at) {
        PyErr_SetString(PyExc_TypeError, "WF2QSchedule heap entries must be tuples");
        return NULL;
    }
    return PyTuple_GET_ITEM(entry, at);
}

/* -1, 0 or 1 as the exact ints a and b compare */
static inline int
int_cmp(PyObject *a, PyObject *b)
{
#if PY_VERSION_HEX < 0x030C0000
    /* 3.11's layout (long_compare's rule): the size carries the sign and the digit count */
    Py_ssize_t sa = Py_SIZE(a), sb = Py_SIZE(b);
    if (sa != sb) {
        return sa < sb ? -1 : 1;
    }
    Py_ssize_t n = sa < 0 ? -sa : sa;
    const digit *da = ((PyLongObject *)a)->ob_digit, *db = ((PyLongObject *)b)->ob_digit;
    while (--n >= 0) {
        if (da[n] != db[n]) {
            int c = da[n] < db[n] ? -1 : 1;
            return sa < 0 ? -c : c;
        }
    }
    return 0;
#else
    int oa, ob;
    long long x = PyLong_AsLongLongAndOverflow(a, &oa), y = PyLong_AsLongLongAndOverflow(b, &ob);
    if (!oa && !ob) {
        return x < y ? -1 : x > y;
    }
    if (oa != ob) {
        return oa < ob ? -1 : 1;
    }
    /* both beyond 64 bits on the same side: the C API's comparison */
    int lt = PyObject_RichCompareBool(a, b, Py_LT);
    return lt ? -1 : !PyObject_RichCompareBool(a, b, Py_EQ);
#endif
}

/* bool(x) (1, 0, or -1 with an error), without a call for an exact int */
static inline int
truth(PyObject *x)
{
    if (PyLong_CheckExact(x)) {
#if PY_VERSION_HEX < 0x030C0000
        return Py_SIZE(x) != 0;
#else
        int overflow;
        return PyLong_AsLongLongAndOverflow(x, &overflow) != 0 || overflow;
#endif
    }
    return PyObject_IsTrue(x);
}

static inline int
verdict(int c, int op)
{
    switch (op) {
    case Py_LT: return c < 0;
    case Py_LE: return c <= 0;
    case Py_EQ: return c == 0;
    case Py_NE: return c != 0;
    case Py_GT: return c > 0;
    default: return c >= 0;
    }
}

/* PyObject_RichCompareBool(a, b, op) (1, 0, or -1 with an error), with the cases of this
 * module done here: two exact ints, and two tuples of exact ints compared item by item as
 * tuples compare (the first unequal item decides, else the lengths) */
static int
compare(PyObject *a, PyObject *b, int op)
{
    if (PyLong_CheckExact(a) && PyLong_CheckExact(b)) {
        return verdict(int_cmp(a, b), op);
    }
    if (PyTuple_CheckExact(a) && PyTuple_CheckExact(b)) {
        Py_ssize_t na = PyTuple_GET_SIZE(a), nb = PyTuple_GET_SIZE(b);
        for (Py_ssize_t i = 0; i < na && i < nb; i++) {
            PyObject *x = PyTuple_GET_ITEM(a, i), *y = PyTuple_GET_ITEM(b, i);
            if (!PyLong_CheckExact(x) || !PyLong_CheckExact(y)) {
                return PyObject_RichCompareBool(a, b, op);
            }
            int c = int_cmp(x, y);
            if (c) {
                return verdict(c, op);
            }
        }
        return verdict(na < nb ? -1 : na > nb, op);
    }
    return PyObject_RichCompareBool(a, b, op);
}

/* 1 if the entry's last item is the current stamp of the position at `pos_at` */
static int
is_current(PyObject *entry, Py_ssize_t pos_at, PyObject *stamp)
{
    Py_ssize_t pos = entry_pos(entry, pos_at);
    if (pos == -1 && PyErr_Occurred()) {
        return -1;
    }
    PyObject *mark = item(stamp, pos);
    if (mark == NULL) {
        return -1;
    }
    return compare(PyTuple_GET_ITEM(entry, PyTuple_GET_SIZE(entry) - 1), mark, Py_EQ);
}

/* ---- heapq's sift rules, on a list (the same layout heapq's functions give) ------------ */

static int
sift_down(PyObject *heap, Py_ssize_t startpos, Py_ssize_t pos)
{
    Py_ssize_t size = PyList_GET_SIZE(heap);
    if (pos >= size) {
        PyErr_SetString(PyExc_IndexError, "index out of range");
        return -1;
    }
    PyObject **arr = ((PyListObject *)heap)->ob_item;
    PyObject *newitem = arr[pos];
    while (pos > startpos) {
        Py_ssize_t parentpos = (pos - 1) >> 1;
        PyObject *parent = arr[parentpos];
        Py_INCREF(newitem);
        Py_INCREF(parent);
        int cmp = compare(newitem, parent, Py_LT);
        Py_DECREF(parent);
        Py_DECREF(newitem);
        if (cmp < 0) {
            return -1;
        }
        if (size != PyList_GET_SIZE(heap)) {
            PyErr_SetString(PyExc_RuntimeError, "list changed size during iteration");
            return -1;
        }
        if (cmp == 0) {
            break;
        }
        arr = ((PyListObject *)heap)->ob_item;
        parent = arr[parentpos];
        newitem = arr[pos];
        arr[parentpos] = newitem;
        arr[pos] = parent;
        pos = parentpos;
    }
    return 0;
}

static int
sift_up(PyObject *heap, Py_ssize_t pos)
{
    Py_ssize_t endpos = PyList_GET_SIZE(heap);
    Py_ssize_t startpos = pos;
    if (pos >= endpos) {
        PyErr_SetString(PyExc_IndexError, "index out of range");
        return -1;
    }
    PyObject **arr = ((PyListObject *)heap)->ob_item;
    Py_ssize_t limit = endpos >> 1;
    while (pos < limit) {
        Py_ssize_t childpos = 2 * pos + 1;
        if (childpos + 1 < endpos) {
            PyObject *a = arr[childpos];
            PyObject *b = arr[childpos + 1];
            Py_INCREF(a);
            Py_INCREF(b);
            int cmp = compare(a, b, Py_LT);
            Py_DECREF(a);
            Py_DECREF(b);
            if (cmp < 0) {
                return -1;
            }
            childpos += ((unsigned)cmp ^ 1);
            arr = ((PyListObject *)heap)->ob_item;
            if (endpos != PyList_GET_SIZE(heap)) {
                PyErr_SetString(PyExc_RuntimeError, "list changed size during iteration");
                return -1;
            }
        }
        PyObject *tmp1 = arr[childpos];
        PyObject *tmp2 = arr[pos];
        arr[childpos] = tmp2;
        arr[pos] = tmp1;
        pos = childpos;
    }
    return sift_down(heap, startpos, pos);
}

/* heappush(heap, entry); the entry (a new reference) is always consumed */
static int
heap_push(PyObject *heap, PyObject *entry)
{
    if (entry == NULL) {
        return -1;
    }
    int failed = PyList_Append(heap, entry);
    Py_DECREF(entry);
    if (failed) {
        return -1;
    }
    return sift_down(heap, 0, PyList_GET_SIZE(heap) - 1);
}

/* heappop(heap): a new reference, or NULL with an error (IndexError when empty) */
static PyObject *
heap_pop(PyObject *heap)
{
    Py_ssize_t n = PyList_GET_SIZE(heap);
    if (n == 0) {
        PyErr_SetString(PyExc_IndexError, "index out of range");
        return NULL;
    }
    PyObject *last = PyList_GET_ITEM(heap, n - 1);
    Py_INCREF(last);
    if (PyList_SetSlice(heap, n - 1, n, NULL)) {
        Py_DECREF(last);
        return NULL;
    }
    n--;
    if (!n) {
        return last;
    }
    PyObject *top = PyList_GET_ITEM(heap, 0);
    PyList_SET_ITEM(heap, 0, last); /* the list owns `last` now, we own `top` */
    if (sift_up(heap, 0)) {
        Py_DECREF(top);
        return NULL;
    }
    return top;
}

/* heappushpop(heap, entry) (entry borrowed): a new reference, or NULL with an error */
static PyObject *
heap_pushpop(PyObject *heap, PyObject *entry)
{
    if (PyList_GET_SIZE(heap) == 0) {
        return Py_NewRef(entry);
    }
    PyObject *top = PyList_GET_ITEM(heap, 0);
    Py_INCREF(top);
    int cmp = compare(top, entry, Py_LT);
    Py_DECREF(top);
    if (cmp < 0) {
        return NULL;
    }
    if (cmp == 0) {
        return Py_NewRef(entry);
    }
    if (PyList_GET_SIZE(heap) == 0) {
        PyErr_SetString(PyExc_IndexError, "index out of range");
        return NULL;
    }
    top = PyList_GET_ITEM(heap, 0);
    PyList_SET_ITEM(heap, 0, Py_NewRef(entry));
    if (sift_up(heap, 0)) {
        Py_DECREF(top);
        return NULL;
    }
    return top;
}

/* Pop the stale entries off the top of `heap` (each entry's position at `pos_at`); 0, or
 * -1 with an error */
static int
drop_stale(PyObject *heap, Py_ssize_t pos_at, PyObject *stamp)
{
    while (PyList_GET_SIZE(heap)) {
        int current = is_current(PyList_GET_ITEM(heap, 0), pos_at, stamp);
        if (current) {
            return current < 0 ? -1 : 0;
        }
        PyObject *gone = heap_pop(heap);
        if (gone == NULL) {
            return -1;
        }
        Py_DECREF(gone);
    }
    return 0;
}

/* ---- the schedule's steps -------------------------------------------------------------- */

/* Bump stamp[pos] by one: the new mark (a new reference) or NULL */
static PyObject *
next_mark(PyObject *stamp, Py_ssize_t pos)
{
    PyObject *mark = item(stamp, pos);
    if (mark == NULL) {
        return NULL;
    }
    mark = PyNumber_Add(mark, state_obj[1]);
    if (mark == NULL || set_item(stamp, pos, Py_NewRef(mark))) {
        Py_XDECREF(mark);
        return NULL;
    }
    return mark;
}

/* one queueing more; rebuild the heaps past the limit (a Python call: it replaces them) */
static int
counted_push(Schedule *self)
{
    self->pushes += 1;
    if (self->pushes > self->limit) {
        PyObject *done = PyObject_CallMethodNoArgs((PyObject *)self, str_rebuild);
        if (done == NULL) {
            return -1;
        }
        Py_DECREF(done);
    }
    return 0;
}

/* (count * u, s + u, pos, mark) for the ready heap: a new reference or NULL */
static PyObject *
ready_entry(PyObject *count, PyObject *u, PyObject *s, PyObject *posobj, PyObject *mark)
{
    PyObject *ratio = PyNumber_Multiply(count, u);
    if (ratio == NULL) {
        return NULL;
    }
    PyObject *finish = PyNumber_Add(s, u);
    if (finish == NULL) {
        Py_DECREF(ratio);
        return NULL;
    }
    PyObject *entry = PyTuple_Pack(4, ratio, finish, posobj, mark);
    Py_DECREF(ratio);
    Py_DECREF(finish);
    return entry;
}

/* WF2QSchedule._flush_at: queue `pos`, which has no current entry, with start `s` and
 * `count` at `vt` (all borrowed) */
static int
flush_at(Schedule *self, Py_ssize_t pos, PyObject *s, PyObject *count, PyObject *vt)
{
    PyObject *stamp, *state, *unit, *u, *mark, *posobj, *heap;
    int le, busy, failed = -1;
    if (!(stamp = list_field(self->stamp, "_stamp")) || !(state = list_field(self->state, "_state"))
        || !(unit = list_field(self->unit, "_unit"))) {
        return -1;
    }
    Py_INCREF(s);
    Py_INCREF(count);
    Py_INCREF(vt);
    mark = next_mark(stamp, pos);
    posobj = PyLong_FromSsize_t(pos);
    if (mark == NULL || posobj == NULL || (u = item(unit, pos)) == NULL) {
        goto done;
    }
    Py_INCREF(u);
    le = compare(s, vt, Py_LE);
    if (le < 0) {
        goto done_u;
    }
    if (le) {
        if (set_item(state, pos, Py_NewRef(state_obj[READY]))
            || !(heap = list_field(self->ready_heap, "_ready_heap"))
            || heap_push(heap, ready_entry(count, u, s, posobj, mark))) {
            goto done_u;
        }
    }
    else if ((busy = truth(count)) < 0) {
        goto done_u;
    }
    else if (busy) {
        PyObject *ratio;
        if (set_item(state, pos, Py_NewRef(state_obj[BUSY]))
            || !(heap = list_field(self->busy_heap, "_busy_heap"))
            || !(ratio = PyNumber_Multiply(count, u))) {
            goto done_u;
        }
        PyObject *entry = PyTuple_Pack(4, ratio, s, posobj, mark);
        Py_DECREF(ratio);
        if (heap_push(heap, entry) || !(heap = list_field(self->busy_wakeups, "_busy_wakeups"))
            || heap_push(heap, PyTuple_Pack(2, s, posobj))) {
            goto done_u;
        }
    }
    else {
        if (set_item(state, pos, Py_NewRef(state_obj[IDLE]))
            || !(heap = list_field(self->idle_heap, "_idle_heap"))
            || heap_push(heap, PyTuple_Pack(3, s, posobj, mark))) {
            goto done_u;
        }
    }
    failed = counted_push(self);
done_u:
    Py_DECREF(u);
done:
    Py_XDECREF(mark);
    Py_XDECREF(posobj);
    Py_DECREF(s);
    Py_DECREF(count);
    Py_DECREF(vt);
    return failed;
}

/* WF2QSchedule._requeue: queue `pos` again after its count went down */
static int
requeue(Schedule *self, Py_ssize_t pos)
{
    PyObject *stamp, *state, *unit, *start, *load, *u, *s, *count, *mark, *posobj, *heap;
    PyObject *st;
    int failed = -1, nonzero, is_ready;
    if (!(stamp = list_field(self->stamp, "_stamp")) || !(state = list_field(self->state, "_state"))
        || !(unit = list_field(self->unit, "_unit")) || !(start = list_field(self->start, "_start"))
        || !(load = list_field(self->load, "_load"))) {
        return -1;
    }
    mark = next_mark(stamp, pos);
    posobj = PyLong_FromSsize_t(pos);
    if (mark == NULL || posobj == NULL || !(u = item(unit, pos)) || !(s = item(start, pos))
        || !(count = item(load, pos)) || !(st = item(state, pos))) {
        goto done;
    }
    Py_INCREF(u);
    Py_INCREF(s);
    Py_INCREF(count);
    if ((is_ready = compare(st, state_obj[READY], Py_EQ)) < 0) {
        goto done_items;
    }
    if (is_ready) {
        if (!(heap = list_field(self->ready_heap, "_ready_heap"))
            || heap_push(heap, ready_entry(count, u, s, posobj, mark))) {
            goto done_items;
        }
    }
    else if ((nonzero = truth(count)) < 0) {
        goto done_items;
    }
    else if (nonzero) { /* busy stays busy; its wakeup entry stays current */
        PyObject *ratio = PyNumber_Multiply(count, u);
        if (ratio == NULL || !(heap = list_field(self->busy_heap, "_busy_heap"))) {
            Py_XDECREF(ratio);
            goto done_items;
        }
        PyObject *entry = PyTuple_Pack(4, ratio, s, posobj, mark);
        Py_DECREF(ratio);
        if (heap_push(heap, entry)) {
            goto done_items;
        }
    }
    else { /* busy turns idle: the idle heap wakes it from now on */
        if (set_item(state, pos, Py_NewRef(state_obj[IDLE]))
            || !(heap = list_field(self->idle_heap, "_idle_heap"))
            || heap_push(heap, PyTuple_Pack(3, s, posobj, mark))) {
            goto done_items;
        }
    }
    failed = counted_push(self);
done_items:
    Py_DECREF(u);
    Py_DECREF(s);
    Py_DECREF(count);
done:
    Py_XDECREF(mark);
    Py_XDECREF(posobj);
    return failed;
}

typedef struct {
    Py_ssize_t pos;
    PyObject *s;
} Woken;

/* WF2QSchedule._wake: make the waiting keys whose S the clock has reached ready */
static int
wake(Schedule *self)
{
    PyObject *vt, *stamp, *state, *unit, *load, *start, *idle, *wakeups, *ready;
    Woken *woken = NULL;
    Py_ssize_t n = 0, cap = 0, i;
    int failed = -1;
    if (!(vt = int_field(self->vt, "_vt")) || !(stamp = list_field(self->stamp, "_stamp"))
        || !(state = list_field(self->state, "_state")) || !(unit = list_field(self->unit, "_unit"))
        || !(load = list_field(self->load, "_load")) || !(start = list_field(self->start, "_start"))
        || !(idle = list_field(self->idle_heap, "_idle_heap"))
        || !(wakeups = list_field(self->busy_wakeups, "_busy_wakeups"))
        || !(ready = list_field(self->ready_heap, "_ready_heap"))) {
        return -1;
    }
    /* held for the whole step: nothing below runs Python code, but nothing need trust it */
    PyObject *held[] = {vt, stamp, state, unit, load, start, idle, wakeups, ready};
    for (i = 0; i < (Py_ssize_t)(sizeof(held) / sizeof(held[0])); i++) {
        Py_INCREF(held[i]);
    }
    for (int which = 0; which < 2; which++) {
        PyObject *heap = which ? wakeups : idle;
        while (PyList_GET_SIZE(heap)) {
            PyObject *first = entry_item(PyList_GET_ITEM(heap, 0), 0);
            if (first == NULL) {
                goto done;
            }
            int due = compare(first, vt, Py_LE);
            if (due <= 0) {
                if (due < 0) {
                    goto done;
                }
                break;
            }
            PyObject *entry = heap_pop(heap);
            if (entry == NULL) {
                goto done;
            }
            Py_ssize_t pos = entry_pos(entry, 1);
            PyObject *s = PyTuple_GET_ITEM(entry, 0);
            int take;
            if (pos == -1 && PyErr_Occurred()) {
                take = -1;
            }
            else if (!which) { /* idle: its entry is current */
                take = is_current(entry, 1, stamp);
            }
            else { /* S only grows, and a key turns busy again only through a pick */
                PyObject *st = item(state, pos), *now = item(start, pos);
                take = st == NULL || now == NULL ? -1 : compare(st, state_obj[BUSY], Py_EQ);
                if (take > 0) {
                    take = compare(now, s, Py_EQ);
                }
            }
            if (take > 0 && n == cap) {
                Py_ssize_t grown = cap ? 2 * cap : 8;
                Woken *more = PyMem_Realloc(woken, (size_t)grown * sizeof(Woken));
                if (more == NULL) {
                    PyErr_NoMemory();
                    take = -1;
                }
                else {
                    woken = more;
                    cap = grown;
                }
            }
            if (take > 0) {
                woken[n].pos = pos;
                woken[n].s = Py_NewRef(s);
                n++;
            }
            Py_DECREF(entry);
            if (take < 0) {
                goto done;
            }
        }
    }
    for (i = 0; i < n; i++) {
        Py_ssize_t pos = woken[i].pos;
        PyObject *mark = next_mark(stamp, pos), *posobj = PyLong_FromSsize_t(pos);
        PyObject *u = NULL, *count = NULL;
        int bad = mark == NULL || posobj == NULL
                  || set_item(state, pos, Py_NewRef(state_obj[READY]))
                  || !(u = item(unit, pos)) || !(count = item(load, pos))
                  || heap_push(ready, ready_entry(count, u, woken[i].s, posobj, mark));
        Py_XDECREF(mark);
        Py_XDECREF(posobj);
        if (bad) {
            goto done;
        }
    }
    failed = 0;
done:
    for (i = 0; i < n; i++) {
        Py_DECREF(woken[i].s);
    }
    PyMem_Free(woken);
    for (i = 0; i < (Py_ssize_t)(sizeof(held) / sizeof(held[0])); i++) {
        Py_DECREF(held[i]);
    }
    return failed;
}

/* the first entry's first item is <= vt */
static int
due(PyObject *heap, PyObject *vt)
{
    if (heap == NULL || !PyList_GET_SIZE(heap)) {
        return 0;
    }
    PyObject *first = entry_item(PyList_GET_ITEM(heap, 0), 0);
    return first == NULL ? -1 : compare(first, vt, Py_LE);
}

/* WF2QSchedule._advance, written out in LocalLedger.acquire: count one connection on
 * `pos` and move it one pick along the schedule; it stays pending. `vt` borrowed. */
static int
advance(Schedule *self, Py_ssize_t pos, PyObject *vt)
{
    PyObject *unit, *load, *start, *state, *u, *count, *nvt = NULL, *s = NULL, *bound = NULL;
    int failed = -1, c;
    if (!(unit = list_field(self->unit, "_unit")) || !(load = list_field(self->load, "_load"))
        || !(start = list_field(self->start, "_start")) || !(state = list_field(self->state, "_state"))
        || !int_field(self->step, "_step") || !int_field(self->frac, "_frac")) {
        return -1;
    }
    if (!(u = item(unit, pos)) || !(count = item(load, pos))) {
        return -1;
    }
    Py_INCREF(u);
    if (set_item(load, pos, PyNumber_Add(count, state_obj[1]))) {
        goto done;
    }
    if (!(nvt = PyNumber_Add(vt, self->step))) {
        goto done;
    }
    if ((c = truth(self->frac)) < 0) {
        goto done;
    }
    if (c) { /* V's step is not whole (the total changed since M was chosen) */
        PyObject *rem, *total;
        if (!int_field(self->rem, "_rem") || !(total = int_field(self->total, "_total"))) {
            goto done;
        }
        if (!(rem = PyNumber_Add(self->rem, self->frac))) {
            goto done;
        }
        if ((c = compare(rem, total, Py_GE)) > 0) {
            Py_SETREF(rem, PyNumber_Subtract(rem, total));
            if (rem != NULL) {
                Py_SETREF(nvt, PyNumber_Add(nvt, state_obj[1]));
            }
        }
        if (c < 0 || rem == NULL || nvt == NULL) {
            Py_XDECREF(rem);
            goto done;
        }
        Py_SETREF(self->rem, rem);
    }
    Py_INCREF(nvt);
    Py_XSETREF(self->vt, nvt);
    if (!(s = item(start, pos)) || !(s = PyNumber_Add(s, u))) {
        goto done;
    }
    /* In a pure WF2Q run neither clamp binds (S stays within one pick of V) */
    if ((c = compare(s, vt, Py_LT)) < 0) {
        goto done;
    }
    if (c) {
        Py_SETREF(s, Py_NewRef(vt));
    }
    else {
        if (!(bound = PyNumber_Add(nvt, u)) || (c = compare(s, bound, Py_GT)) < 0) {
            goto done;
        }
        if (c) {
            Py_SETREF(s, Py_NewRef(bound));
        }
    }
    if (set_item(start, pos, Py_NewRef(s)) || set_item(state, pos, Py_NewRef(state_obj[PENDING]))) {
        goto done;
    }
    self->pending = pos;
    failed = 0;
done:
    Py_DECREF(u);
    Py_XDECREF(nvt);
    Py_XDECREF(s);
    Py_XDECREF(bound);
    return failed;
}

/* the acquire proper, once the exclude set is known to be empty */
static PyObject *
acquire(Schedule *self, PyObject *exclude)
{
    PyObject *vt, *stamp, *ready, *idle, *start, *load, *state, *keys, *key;
    PyObject *parked = NULL, *first = NULL, *result = NULL;
    Py_ssize_t pos;
    int c;
    if (!(vt = int_field(self->vt, "_vt")) || !(stamp = list_field(self->stamp, "_stamp"))
        || !(start = list_field(self->start, "_start")) || !(load = list_field(self->load, "_load"))
        || !(state = list_field(self->state, "_state")) || !(keys = list_field(self->keys, "_keys"))) {
        return NULL;
    }
    Py_INCREF(vt); /* the clock as this acquire found it */
    Py_INCREF(stamp);
    pos = self->pending;
    if (pos >= 0) {
        /* _flush(): the key acquired last has no entry in any heap, so its stamp stays */
        PyObject *s, *count;
        self->pending = -1;
        if (!(s = item(start, pos)) || !(count = item(load, pos))) {
            goto done;
        }
        int later = compare(s, vt, Py_GT), some = truth(count);
        if (later < 0 || some < 0) {
            goto done;
        }
        if (later && !some) {
            PyObject *mark = item(stamp, pos), *posobj;
            if (mark == NULL || set_item(state, pos, Py_NewRef(state_obj[IDLE]))
                || !(posobj = PyLong_FromSsize_t(pos))) {
                goto done;
            }
            parked = PyTuple_Pack(3, s, posobj, mark);
            Py_DECREF(posobj);
            if (parked == NULL) {
                goto done;
            }
        }
        else if (flush_at(self, pos, s, count, vt)) {
            goto done;
        }
    }
    /* (the parked entry cannot wake: its S is past the clock) */
    if ((c = due(list_field(self->idle_heap, "_idle_heap"), vt)) == 0) {
        c = due(list_field(self->busy_wakeups, "_busy_wakeups"), vt);
    }
    if (c < 0 || PyErr_Occurred() || (c && wake(self))) {
        goto done;
    }
    if (!(ready = list_field(self->ready_heap, "_ready_heap"))
        || !(idle = list_field(self->idle_heap, "_idle_heap"))) {
        goto done;
    }
    if (exclude != NULL) {
        if (parked != NULL && heap_push(idle, Py_NewRef(parked))) {
            goto done;
        }
        result = PyObject_CallMethodOneArg((PyObject *)self, str_excluding, exclude);
        goto done;
    }
    if (drop_stale(ready, 2, stamp)) {
        goto done;
    }
    c = 0;
    if (PyList_GET_SIZE(ready)) {
        PyObject *ratio = entry_item(PyList_GET_ITEM(ready, 0), 0);
        if (ratio == NULL || (c = truth(ratio)) < 0) {
            goto done;
        }
        c = !c; /* no connection on the ready top */
    }
    if (c) { /* the common case under load: a ready key with no connection */
        if (!(first = heap_pop(ready))) {
            goto done;
        }
        if (parked != NULL && heap_push(idle, Py_NewRef(parked))) {
            goto done;
        }
        pos = entry_pos(first, 2);
    }
    else if (parked != NULL) {
        /* the idle key with the earliest S, the parked one included */
        if (!(first = heap_pushpop(idle, parked))) {
            goto done;
        }
        while ((c = is_current(first, 1, stamp)) == 0) { /* parked is current: this ends */
            Py_SETREF(first, heap_pop(idle));
            if (first == NULL) {
                goto done;
            }
        }
        if (c < 0) {
            goto done;
        }
        pos = entry_pos(first, 1);
    }
    else {
        if (drop_stale(idle, 1, stamp)) {
            goto done;
        }
        if (PyList_GET_SIZE(idle)) { /* no connection beats any ready key's positive ratio */
            if (!(first = heap_pop(idle))) {
                goto done;
            }
            pos = entry_pos(first, 1);
        }
        else {
            PyObject *busy = list_field(self->busy_heap, "_busy_heap");
            if (busy == NULL || drop_stale(busy, 2, stamp)) {
                goto done;
            }
            /* ready keys win ratio ties: that is the smooth tie-break */
            int take_ready = PyList_GET_SIZE(ready) > 0;
            if (take_ready && PyList_GET_SIZE(busy)) {
                PyObject *b = entry_item(PyList_GET_ITEM(busy, 0), 0);
                PyObject *r = entry_item(PyList_GET_ITEM(ready, 0), 0);
                if (b == NULL || r == NULL || (c = compare(b, r, Py_LT)) < 0) {
                    goto done;
                }
                take_ready = !c;
            }
            if (take_ready) {
                first = heap_pop(ready);
            }
            else if (PyList_GET_SIZE(busy)) {
                first = heap_pop(busy);
            }
            else {
                result = Py_NewRef(Py_None);
                goto done;
            }
            if (first == NULL) {
                goto done;
            }
            pos = entry_pos(first, 2);
        }
    }
    if ((pos == -1 && PyErr_Occurred()) || advance(self, pos, vt)) {
        goto done;
    }
    /* re-read: a rebuild (Python code) ran since the fields were read */
    if ((keys = list_field(self->keys, "_keys")) && (key = item(keys, pos)) != NULL) {
        result = Py_NewRef(key);
    }
done:
    Py_DECREF(vt);
    Py_DECREF(stamp);
    Py_XDECREF(parked);
    Py_XDECREF(first);
    return result;
}

PyDoc_STRVAR(acquire_doc,
"acquire($self, /, exclude=frozenset())\n--\n\n"
"LocalLedger.acquire in C: the same choice on the same state, amortised O(log n).");

static PyObject *
Schedule_acquire(Schedule *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *exclude = NULL;
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs + nkw > 1) {
        PyErr_Format(PyExc_TypeError, "acquire() takes at most 1 argument (%zd given)",
                     nargs + nkw);
        return NULL;
    }
    if (nkw) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, 0);
        if (!PyUnicode_Check(name) || PyUnicode_CompareWithASCIIString(name, "exclude") != 0) {
            PyErr_Format(PyExc_TypeError,
                         "acquire() got an unexpected keyword argument '%S'", name);
            return NULL;
        }
    }
    if (nargs + nkw) {
        int some = PyObject_IsTrue(args[0]);
        if (some < 0) {
            return NULL;
        }
        if (some) {
            exclude = args[0];
        }
    }
    return acquire(self, exclude);
}

/* LocalLedger.release_open: 1 if `key` had a connection to release, 0 if not, -1 */
static int
release_open(Schedule *self, PyObject *key)
{
    PyObject *index, *load, *state, *posobj, *count;
    if (self->index == NULL || !PyDict_CheckExact(self->index)) {
        PyErr_SetString(PyExc_TypeError, "WF2QSchedule._index must be a dict");
        return -1;
    }
    index = self->index;
    posobj = PyDict_GetItemWithError(index, key);
    if (posobj == NULL) { /* not eligible (draining, or unknown) */
        PyObject *draining = self->draining, *left;
        int more, one;
        if (PyErr_Occurred()) {
            return -1;
        }
        if (draining == NULL || !PyDict_CheckExact(draining)) {
            PyErr_SetString(PyExc_TypeError, "WF2QSchedule._draining must be a dict");
            return -1;
        }
        count = PyDict_GetItemWithError(draining, key);
        if (count == NULL) {
            return PyErr_Occurred() ? -1 : 0;
        }
        Py_INCREF(count);
        more = compare(count, state_obj[1], Py_GT);
        one = more ? 0 : compare(count, state_obj[1], Py_EQ);
        if (more > 0) {
            left = PyNumber_Subtract(count, state_obj[1]);
            more = left == NULL || PyDict_SetItem(draining, key, left) ? -1 : 1;
            Py_XDECREF(left);
        }
        else if (one > 0 && PyDict_DelItem(draining, key)) {
            one = -1;
        }
        int open = more < 0 || one < 0 ? -1 : compare(count, state_obj[0], Py_GT);
        Py_DECREF(count);
        return open;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(posobj);
    if ((pos == -1 && PyErr_Occurred()) || !(load = list_field(self->load, "_load"))
        || !(state = list_field(self->state, "_state")) || !(count = item(load, pos))) {
        return -1;
    }
    int some = truth(count);
    if (some <= 0) {
        return some;
    }
    if (set_item(load, pos, PyNumber_Subtract(count, state_obj[1]))) {
        return -1;
    }
    /* a pending key is queued with its count at the flush; one out is in no heap */
    if (pos != self->pending) {
        PyObject *st = item(state, pos);
        int out = st == NULL ? -1 : compare(st, state_obj[OUT], Py_EQ);
        if (out < 0 || (!out && requeue(self, pos))) {
            return -1;
        }
    }
    return 1;
}

PyDoc_STRVAR(release_open_doc,
"release_open($self, key, /)\n--\n\n"
"LocalLedger.release_open in C: release one connection on key, saying whether it had one.");

static PyObject *
Schedule_release_open(Schedule *self, PyObject *key)
{
    int open = release_open(self, key);
    if (open < 0) {
        return NULL;
    }
    return Py_NewRef(open ? Py_True : Py_False);
}

PyDoc_STRVAR(release_doc,
"release($self, key, /)\n--\n\n"
"LocalLedger.release in C: one connection on key ended (never below 0).");

static PyObject *
Schedule_release(Schedule *self, PyObject *key)
{
    if (release_open(self, key) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* ---- the request path of a WeightedLeastConnections on this ledger ---------------------- */

static PyObject *str_acquire, *str_release, *str_picks, *str_ends, *str_backend, *str_key,
    *str_live, *str_client, *str_exclude, *str_failed;

/* the attributes of a Slot read on the request path, in this order */
enum { PICKS, ENDS, BACKEND, KEY, LIVE, NFIELDS };
static PyObject **field_names[NFIELDS] = {&str_picks, &str_ends, &str_backend, &str_key,
                                          &str_live};

typedef struct {
    PyObject_HEAD
    Schedule *ledger;     /* a LocalLedger whose acquire and release_open are the C ones */
    PyObject *lock_acquire; /* the scheduler's lock's bound methods: every ledger call runs */
    PyObject *lock_release; /* under that lock */
    PyObject *slots;      /* the scheduler's dict: key -> Slot (replaced by update: retarget) */
    PyObject *lease;      /* the Lease class */
    PyObject *slow_pick;  /* the pure-Python methods, bound: called with the call's own */
    PyObject *slow_connection; /* arguments for every case the C path does not serve (bad */
    PyObject *slow_release; /* arguments, exclude, nothing eligible, failed, a stranger), */
    PyObject *slow_end;   /* and a lease's end that the C path does not take: (slot, failed) */
    PyObject *end;        /* this object's own end method, bound once: every lease holds it */
    /* where a Slot's fields are (its type's __slots__ member offsets): read directly */
    PyTypeObject *slot_type;
    Py_ssize_t offset[NFIELDS];
} RequestPath;

static PyTypeObject ScheduleType;

static PyObject *empty_tuple;

/* method() for a bound method of the lock: its C function called directly when it is one
 * (a C lock's acquire and release are: no call machinery in between), else a call */
static int
lock_call(PyObject *method)
{
    PyObject *res;
    if (PyCFunction_Check(method)) {
        PyCFunction f = PyCFunction_GET_FUNCTION(method);
        PyObject *self = PyCFunction_GET_SELF(method);
        switch (PyCFunction_GET_FLAGS(method) & ~METH_COEXIST) {
        case METH_NOARGS:
            res = f(self, NULL);
            break;
        case METH_VARARGS:
            res = f(self, empty_tuple);
            break;
        case METH_VARARGS | METH_KEYWORDS:
            res = ((PyCFunctionWithKeywords)(void (*)(void))f)(self, empty_tuple, NULL);
            break;
        default:
            res = PyObject_Vectorcall(method, NULL, 0, NULL);
        }
        if (res == NULL && !PyErr_Occurred()) {
            PyErr_SetString(PyExc_SystemError, "the lock's method failed without an error");
        }
    }
    else {
        res = PyObject_Vectorcall(method, NULL, 0, NULL);
    }
    if (res == NULL) {
        return -1;
    }
    Py_DECREF(res);
    return 0;
}

/* Learn where a Slot type keeps the fields read here: each a plain __slots__ member, else
 * slot_type stays NULL and every read goes through getattr */
static void
learn_layout(RequestPath *self, PyTypeObject *type)
{
    Py_CLEAR(self->slot_type);
    for (int i = 0; i < NFIELDS; i++) {
        /* the class attribute: a member descriptor for a __slots__ field */
        PyObject *descr = PyObject_GetAttr((PyObject *)type, *field_names[i]);
        if (descr == NULL) {
            PyErr_Clear(); /* the getattr on the slot will say what is wrong */
            return;
        }
        int plain = Py_IS_TYPE(descr, &PyMemberDescr_Type);
        PyMemberDef *member = plain ? ((PyMemberDescrObject *)descr)->d_member : NULL;
        Py_DECREF(descr); /* the type holds it */
        if (member == NULL || member->type != T_OBJECT_EX) {
            return;
        }
        self->offset[i] = member->offset;
    }
    Py_INCREF(type);
    self->slot_type = type;
}

/* slot.<field>: a new reference, or NULL with an error */
static PyObject *
slot_field(RequestPath *self, PyObject *slot, int field)
{
    if (Py_TYPE(slot) != self->slot_type) {
        learn_layout(self, Py_TYPE(slot));
        if (self->slot_type == NULL) {
            return PyObject_GetAttr(slot, *field_names[field]);
        }
    }
    PyObject *value = *(PyObject **)((char *)slot + self->offset[field]);
    if (value == NULL) {
        PyErr_SetObject(PyExc_AttributeError, *field_names[field]);
        return NULL;
    }
    return Py_NewRef(value);
}

/* next(slot.<count>): one step of one of the slot's counts (see lbalgo._counter) */
static int
step(RequestPath *self, PyObject *slot, int field)
{
    PyObject *count = slot_field(self, slot, field);
    if (count == NULL) {
        return -1;
    }
    iternextfunc next = Py_TYPE(count)->tp_iternext;
    PyObject *before = next == NULL ? NULL : next(count);
    Py_DECREF(count);
    if (before == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_RuntimeError, "a count of a slot is exhausted");
        }
        return -1;
    }
    Py_DECREF(before);
    return 0;
}

/* release the lock, keeping an error raised under it (try / finally); `failed` passes on */
static int
unlock(RequestPath *self, int failed)
{
    if (!PyErr_Occurred()) {
        return lock_call(self->lock_release) ? -1 : failed;
    }
    PyObject *exc_type, *exc, *tb;
    PyErr_Fetch(&exc_type, &exc, &tb);
    if (lock_call(self->lock_release)) {
        Py_XDECREF(exc_type);
        Py_XDECREF(exc);
        Py_XDECREF(tb);
        return -1;
    }
    PyErr_Restore(exc_type, exc, tb);
    return failed;
}

/* 0, or -1 with an error when __init__ has not set the fields up */
static int
not_ready(RequestPath *self)
{
    if (self->ledger == NULL) {
        PyErr_SetString(PyExc_TypeError, "RequestPath.__init__ was not called");
        return -1;
    }
    return 0;
}

/* Under the lock: acquire, find the slot, count its pick. The slot (a new reference),
 * None when no key is eligible, or NULL with an error. */
static PyObject *
pick_slot(RequestPath *self)
{
    PyObject *slot = NULL, *key;
    if (lock_call(self->lock_acquire)) {
        return NULL;
    }
    key = acquire(self->ledger, NULL);
    if (key == Py_None) {
        slot = key;
    }
    else if (key != NULL) {
        slot = PyDict_GetItemWithError(self->slots, key);
        if (slot == NULL) {
            if (!PyErr_Occurred()) {
                PyErr_SetObject(PyExc_KeyError, key);
            }
        }
        else {
            Py_INCREF(slot);
            if (step(self, slot, PICKS)) {
                Py_CLEAR(slot);
            }
        }
        Py_DECREF(key);
    }
    if (unlock(self, 0)) {
        Py_CLEAR(slot);
    }
    return slot;
}

/* Whether a call (client=None, *, exclude=()) of pick or connection is one the fast path may
 * serve, with its exclude (borrowed, NULL if absent); anything else (an extra positional,
 * an unknown or repeated keyword) is the pure method's to refuse. Sets no error. */
static int
plain_call(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, PyObject **exclude)
{
    *exclude = NULL;
    if (nargs > 1) {
        return 0;
    }
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t i = 0; i < nkw; i++) {
        /* keywords are exact str objects (the interpreter checks): Compare cannot fail */
        PyObject *kw = PyTuple_GET_ITEM(kwnames, i);
        if (!nargs && (kw == str_client || PyUnicode_Compare(kw, str_client) == 0)) {
            continue; /* the client plays no part in the choice */
        }
        if (kw != str_exclude && PyUnicode_Compare(kw, str_exclude) != 0) {
            return 0;
        }
        *exclude = args[nargs + i];
    }
    return 1;
}

/* the slot for a fast pick, or NULL: *error then says whether that is an error */
static PyObject *
fast_slot(RequestPath *self, PyObject *exclude, int *error)
{
    *error = 0;
    if (exclude != NULL) {
        int some = PyObject_IsTrue(exclude);
        if (some) {
            *error = some < 0;
            return NULL;
        }
    }
    PyObject *slot = pick_slot(self);
    if (slot == NULL) {
        *error = 1;
        return NULL;
    }
    if (slot == Py_None) { /* nothing eligible: the checked path says why */
        Py_DECREF(slot);
        return NULL;
    }
    return slot;
}

/* pick's and connection's common part: the slot the fast path serves, or NULL with *result
 * set to `pure`'s answer to the call's own arguments (bad arguments, an exclude set, nothing
 * eligible: its errors and messages), or NULL with *result NULL and an error. */
static PyObject *
fast_or_pure(RequestPath *self, PyObject *pure, PyObject *const *args, Py_ssize_t nargs,
             PyObject *kwnames, PyObject **result)
{
    PyObject *exclude, *slot;
    int error = 0;
    *result = NULL;
    if (not_ready(self)) {
        return NULL;
    }
    slot = plain_call(args, nargs, kwnames, &exclude) ? fast_slot(self, exclude, &error) : NULL;
    if (slot == NULL && !error) {
        *result = PyObject_Vectorcall(pure, args, nargs, kwnames);
    }
    return slot;
}

PyDoc_STRVAR(pick_doc,
"pick($self, /, client=None, *, exclude=())\n--\n\n"
"WeightedLeastConnections.pick: under the lock, acquire a key in the ledger and count a\n"
"pick on its slot (the checked path with an exclude set, or when nothing is eligible).");

static PyObject *
RequestPath_pick(RequestPath *self, PyObject *const *args, Py_ssize_t nargs,
                 PyObject *kwnames)
{
    PyObject *result, *slot = fast_or_pure(self, self->slow_pick, args, nargs, kwnames, &result);
    if (slot == NULL) {
        return result;
    }
    PyObject *backend = slot_field(self, slot, BACKEND);
    Py_DECREF(slot);
    return backend;
}

PyDoc_STRVAR(connection_doc,
"connection($self, /, client=None, *, exclude=())\n--\n\n"
"WeightedLeastConnections.connection: pick as pick() does and return a Lease whose end is\n"
"this object's end().");

static PyObject *
RequestPath_connection(RequestPath *self, PyObject *const *args, Py_ssize_t nargs,
                       PyObject *kwnames)
{
    PyObject *result;
    PyObject *slot = fast_or_pure(self, self->slow_connection, args, nargs, kwnames, &result);
    if (slot == NULL) {
        return result;
    }
    PyObject *lease = NULL, *backend = slot_field(self, slot, BACKEND);
    if (backend != NULL) {
        PyObject *call[3] = {backend, slot, self->end};
        lease = PyObject_Vectorcall(self->lease, call, 3, NULL);
        Py_DECREF(backend);
    }
    Py_DECREF(slot);
    return lease;
}

/* Under the lock: release one connection of `slot` in the ledger and count its end there
 * if it had one (a slot removed meanwhile is not live: nothing). */
static int
end_slot(RequestPath *self, PyObject *slot)
{
    PyObject *live, *key;
    int open;
    Py_INCREF(slot);
    if (lock_call(self->lock_acquire)) {
        Py_DECREF(slot);
        return -1;
    }
    live = slot_field(self, slot, LIVE);
    open = live == NULL ? -1 : PyObject_IsTrue(live);
    Py_XDECREF(live);
    if (open > 0) {
        key = slot_field(self, slot, KEY);
        open = key == NULL ? -1 : release_open(self->ledger, key);
        Py_XDECREF(key);
        if (open > 0) {
            open = step(self, slot, ENDS);
        }
    }
    open = unlock(self, open < 0 ? -1 : 0);
    Py_DECREF(slot);
    return open;
}

PyDoc_STRVAR(release_path_doc,
"release($self, backend, /, *, failed=False)\n--\n\n"
"WeightedLeastConnections.release: the very Backend a pick of this group returned is\n"
"released in the ledger under the lock; anything else takes the checked path.");

static PyObject *
RequestPath_release(RequestPath *self, PyObject *const *args, Py_ssize_t nargs,
                    PyObject *kwnames)
{
    PyObject *backend = NULL, *failed = Py_False;
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (not_ready(self)) {
        return NULL;
    }
    if (nargs > 1) {
        goto pure; /* the pure method raises its own error */
    }
    if (nargs) {
        backend = args[0];
    }
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *kw = PyTuple_GET_ITEM(kwnames, i);
        if (kw == str_failed || PyUnicode_Compare(kw, str_failed) == 0) {
            failed = args[nargs + i];
        }
        else if (!nargs && PyUnicode_Compare(kw, str_backend) == 0) {
            backend = args[nargs + i];
        }
        else {
            PyErr_Clear(); /* an unexpected keyword: the pure method says so */
            goto pure;
        }
    }
    if (backend == NULL) {
        goto pure;
    }
    if (failed == Py_False) {
        /* the Backend a pick returned, by its key (see BaseScheduler.release) */
        PyObject *key = PyObject_GetAttr(backend, str_key), *slot = NULL;
        if (key != NULL) {
            slot = PyDict_GetItemWithError(self->slots, key);
            Py_DECREF(key);
        }
        if (slot == NULL && PyErr_Occurred()) {
            /* not a Backend: the checked path says what it is */
            if (!PyErr_ExceptionMatches(PyExc_Exception)) {
                return NULL;
            }
            PyErr_Clear();
        }
        if (slot != NULL) {
            Py_INCREF(slot);
            PyObject *mine = slot_field(self, slot, BACKEND);
            int same = mine == backend;
            Py_XDECREF(mine); /* only its identity is compared */
            if (mine == NULL || (same && end_slot(self, slot))) {
                Py_DECREF(slot);
                return NULL;
            }
            Py_DECREF(slot);
            if (same) {
                Py_RETURN_NONE;
            }
        }
    }
pure:
    return PyObject_Vectorcall(self->slow_release, args, nargs, kwnames);
}

PyDoc_STRVAR(end_doc,
"end($self, slot, failed, /)\n--\n\n"
"A lease's end (see lbalgo.Lease): a release in the ledger, or a failure handed to the\n"
"scheduler's checked path.");

static PyObject *
RequestPath_end(RequestPath *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "end() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    if (not_ready(self)) {
        return NULL;
    }
    if (args[1] != Py_False) {
        return PyObject_Vectorcall(self->slow_end, args, 2, NULL);
    }
    if (end_slot(self, args[0])) {
        return NULL;
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(retarget_doc,
"retarget($self, slots, /)\n--\n\n"
"The scheduler's slots dict after an update replaced it.");

static PyObject *
RequestPath_retarget(RequestPath *self, PyObject *slots)
{
    if (!PyDict_CheckExact(slots)) {
        PyErr_Format(PyExc_TypeError, "slots must be a dict, got %R", slots);
        return NULL;
    }
    Py_INCREF(slots);
    Py_XSETREF(self->slots, slots);
    Py_RETURN_NONE;
}

static int RequestPath_clear(RequestPath *self);

static int
RequestPath_init(RequestPath *self, PyObject *args, PyObject *kwds)
{
    PyObject *ledger, *lock, *slots, *lease, *slow_pick, *slow_connection, *slow_release;
    PyObject *slow_end;
    static char *names[] = {"ledger", "lock", "slots", "lease", "slow_pick", "slow_connection",
                            "slow_release", "slow_end", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OO!OOOOO:RequestPath", names,
                                     &ScheduleType, &ledger, &lock, &PyDict_Type, &slots, &lease,
                                     &slow_pick, &slow_connection, &slow_release, &slow_end)) {
        return -1;
    }
    if (!PyDict_CheckExact(slots)) {
        PyErr_Format(PyExc_TypeError, "slots must be a dict, got %R", slots);
        return -1;
    }
    PyObject *callables[] = {lease, slow_pick, slow_connection, slow_release, slow_end};
    for (size_t i = 0; i < sizeof(callables) / sizeof(callables[0]); i++) {
        if (!PyCallable_Check(callables[i])) {
            PyErr_Format(PyExc_TypeError, "RequestPath needs callables, got %R", callables[i]);
            return -1;
        }
    }
    PyObject *lock_acquire = PyObject_GetAttr(lock, str_acquire);
    PyObject *lock_release = lock_acquire ? PyObject_GetAttr(lock, str_release) : NULL;
    PyObject *end = lock_release ? PyObject_GetAttrString((PyObject *)self, "end") : NULL;
    if (end == NULL) {
        Py_XDECREF(lock_acquire);
        Py_XDECREF(lock_release);
        return -1;
    }
    RequestPath_clear(self);
    self->ledger = (Schedule *)Py_NewRef(ledger);
    self->lock_acquire = lock_acquire;
    self->lock_release = lock_release;
    self->slots = Py_NewRef(slots);
    self->lease = Py_NewRef(lease);
    self->slow_pick = Py_NewRef(slow_pick);
    self->slow_connection = Py_NewRef(slow_connection);
    self->slow_release = Py_NewRef(slow_release);
    self->slow_end = Py_NewRef(slow_end);
    self->end = end;
    return 0;
}

static int
RequestPath_traverse(RequestPath *self, visitproc visit, void *arg)
{
    Py_VISIT(self->ledger);
    Py_VISIT(self->lock_acquire);
    Py_VISIT(self->lock_release);
    Py_VISIT(self->slots);
    Py_VISIT(self->lease);
    Py_VISIT(self->slow_pick);
    Py_VISIT(self->slow_connection);
    Py_VISIT(self->slow_release);
    Py_VISIT(self->slow_end);
    Py_VISIT(self->end);
    Py_VISIT(self->slot_type);
    return 0;
}

static int
RequestPath_clear(RequestPath *self)
{
    Py_CLEAR(self->ledger);
    Py_CLEAR(self->lock_acquire);
    Py_CLEAR(self->lock_release);
    Py_CLEAR(self->slots);
    Py_CLEAR(self->lease);
    Py_CLEAR(self->slow_pick);
    Py_CLEAR(self->slow_connection);
    Py_CLEAR(self->slow_release);
    Py_CLEAR(self->slow_end);
    Py_CLEAR(self->end);
    Py_CLEAR(self->slot_type);
    return 0;
}

static void
RequestPath_dealloc(RequestPath *self)
{
    PyObject_GC_UnTrack(self);
    RequestPath_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* every method needs the fields init sets */
static PyObject *
RequestPath_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    return type->tp_alloc(type, 0);
}

static PyMethodDef RequestPath_methods[] = {
    {"pick", (PyCFunction)(void (*)(void))RequestPath_pick, METH_FASTCALL | METH_KEYWORDS,
     pick_doc},
    {"connection", (PyCFunction)(void (*)(void))RequestPath_connection,
     METH_FASTCALL | METH_KEYWORDS, connection_doc},
    {"release", (PyCFunction)(void (*)(void))RequestPath_release, METH_FASTCALL | METH_KEYWORDS,
     release_path_doc},
    {"end", (PyCFunction)(void (*)(void))RequestPath_end, METH_FASTCALL, end_doc},
    {"retarget", (PyCFunction)RequestPath_retarget, METH_O, retarget_doc},
    {NULL},
};

static PyTypeObject RequestPathType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "lbalgo._wf2q_c.RequestPath",
    .tp_doc = PyDoc_STR("RequestPath(ledger, lock, slots, lease, slow_pick, slow_connection, "
                        "slow_release, slow_end): the pick, release and lease end of a "
                        "WeightedLeastConnections on a LocalLedger, in C."),
    .tp_basicsize = sizeof(RequestPath),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = RequestPath_new,
    .tp_init = (initproc)RequestPath_init,
    .tp_traverse = (traverseproc)RequestPath_traverse,
    .tp_clear = (inquiry)RequestPath_clear,
    .tp_dealloc = (destructor)RequestPath_dealloc,
    .tp_methods = RequestPath_methods,
};

/* ---- the type -------------------------------------------------------------------------- */

static PyObject *
Schedule_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Schedule *self = (Schedule *)type->tp_alloc(type, 0);
    if (self != NULL) {
        self->pending = -1;
        self->limit = 64;
    }
    return (PyObject *)self;
}

static int
Schedule_traverse(Schedule *self, visitproc visit, void *arg)
{
    Py_VISIT(self->draining);
    Py_VISIT(self->index);
    Py_VISIT(self->keys);
    Py_VISIT(self->load);
    Py_VISIT(self->unit);
    Py_VISIT(self->start);
    Py_VISIT(self->state);
    Py_VISIT(self->stamp);
    Py_VISIT(self->ready_heap);
    Py_VISIT(self->idle_heap);
    Py_VISIT(self->busy_heap);
    Py_VISIT(self->busy_wakeups);
    Py_VISIT(self->scale);
    Py_VISIT(self->vt);
    Py_VISIT(self->step);
    Py_VISIT(self->frac);
    Py_VISIT(self->rem);
    Py_VISIT(self->weight);
    Py_VISIT(self->total);
    Py_VISIT(self->cap);
    return 0;
}

static int
Schedule_clear(Schedule *self)
{
    Py_CLEAR(self->draining);
    Py_CLEAR(self->index);
    Py_CLEAR(self->keys);
    Py_CLEAR(self->load);
    Py_CLEAR(self->unit);
    Py_CLEAR(self->start);
    Py_CLEAR(self->state);
    Py_CLEAR(self->stamp);
    Py_CLEAR(self->ready_heap);
    Py_CLEAR(self->idle_heap);
    Py_CLEAR(self->busy_heap);
    Py_CLEAR(self->busy_wakeups);
    Py_CLEAR(self->scale);
    Py_CLEAR(self->vt);
    Py_CLEAR(self->step);
    Py_CLEAR(self->frac);
    Py_CLEAR(self->rem);
    Py_CLEAR(self->weight);
    Py_CLEAR(self->total);
    Py_CLEAR(self->cap);
    return 0;
}

static void
Schedule_dealloc(Schedule *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Schedule_clear(self);
    /* a Python subclass's dealloc (subtype_dealloc) drops the reference to its type */
    type->tp_free((PyObject *)self);
}

#define FIELD(name, member) \
    {name, T_OBJECT_EX, offsetof(Schedule, member), 0, NULL}

static PyMemberDef Schedule_members[] = {
    FIELD("_draining", draining),
    FIELD("_index", index),
    FIELD("_keys", keys),
    FIELD("_load", load),
    FIELD("_unit", unit),
    FIELD("_start", start),
    FIELD("_state", state),
    FIELD("_stamp", stamp),
    FIELD("_ready_heap", ready_heap),
    FIELD("_idle_heap", idle_heap),
    FIELD("_busy_heap", busy_heap),
    FIELD("_busy_wakeups", busy_wakeups),
    FIELD("_scale", scale),
    FIELD("_vt", vt),
    FIELD("_step", step),
    FIELD("_frac", frac),
    FIELD("_rem", rem),
    FIELD("_weight", weight),
    FIELD("_total", total),
    FIELD("_cap", cap),
    {"_pending", T_PYSSIZET, offsetof(Schedule, pending), 0, NULL},
    {"_pushes", T_PYSSIZET, offsetof(Schedule, pushes), 0, NULL},
    {"_limit", T_PYSSIZET, offsetof(Schedule, limit), 0, NULL},
    {NULL},
};

static PyMethodDef Schedule_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))Schedule_acquire, METH_FASTCALL | METH_KEYWORDS,
     acquire_doc},
    {"release_open", (PyCFunction)Schedule_release_open, METH_O, release_open_doc},
    {"release", (PyCFunction)Schedule_release, METH_O, release_doc},
    {NULL},
};

static PyTypeObject ScheduleType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "lbalgo._wf2q_c.Schedule",
    .tp_doc = PyDoc_STR("The state of a WF2Q schedule, with its hot operations in C."),
    .tp_basicsize = sizeof(Schedule),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = Schedule_new,
    .tp_traverse = (traverseproc)Schedule_traverse,
    .tp_clear = (inquiry)Schedule_clear,
    .tp_dealloc = (destructor)Schedule_dealloc,
    .tp_members = Schedule_members,
    .tp_methods = Schedule_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "lbalgo._wf2q_c",
    .m_doc = PyDoc_STR("LocalLedger's acquire and release in C (see lbalgo._wf2q)."),
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__wf2q_c(void)
{
    for (int i = 0; i < 5; i++) {
        if (state_obj[i] == NULL && !(state_obj[i] = PyLong_FromLong(i))) {
            return NULL;
        }
    }
    if ((str_rebuild == NULL && !(str_rebuild = PyUnicode_InternFromString("_rebuild_heaps")))
        || (str_excluding == NULL
            && !(str_excluding = PyUnicode_InternFromString("_acquire_excluding")))) {
        return NULL;
    }
    const char *names[] = {"acquire", "release", "picks", "ends", "backend", "key", "live",
                           "client", "exclude", "failed"};
    PyObject **interned[] = {&str_acquire, &str_release, &str_picks, &str_ends, &str_backend,
                             &str_key, &str_live, &str_client, &str_exclude, &str_failed};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (*interned[i] == NULL && !(*interned[i] = PyUnicode_InternFromString(names[i]))) {
            return NULL;
        }
    }
    if (empty_tuple == NULL && !(empty_tuple = PyTuple_New(0))) {
        return NULL;
    }
    if (PyType_Ready(&ScheduleType) < 0 || PyType_Ready(&RequestPathType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    Py_INCREF(&ScheduleType);
    if (PyModule_AddObject(m, "Schedule", (PyObject *)&ScheduleType) < 0) {
        Py_DECREF(&ScheduleType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&RequestPathType);
    if (PyModule_AddObject(m, "RequestPath", (PyObject *)&RequestPathType) < 0) {
        Py_DECREF(&RequestPathType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
