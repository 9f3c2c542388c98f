/*
 * zeus._native -- the mechanism under the shared-memory channel.
 *
 * Theory of operation
 * -------------------
 * Python cannot issue an acquire load, a release store or a full fence on a word that another
 * process reads concurrently, and it cannot sleep in FUTEX_WAIT.  This module does exactly
 * those things and nothing else: it holds no policy.  Which word to load, when to sleep, how
 * long to spin and what a value means are decided in Python (zeus.channel, zeus.core).
 *
 * A `Mapping` pins a writable buffer (an mmap of the region) for as long as it lives, so the
 * memory cannot be unmapped under a pointer held here (mmap.close() raises BufferError while a
 * Mapping exists).  Every offset is bounds- and alignment-checked before use, so a caller's
 * mistake raises ValueError instead of touching memory outside the region.
 *
 * Memory ordering (C11 <stdatomic.h>):
 *   - load_*    : memory_order_acquire -- later reads see what the writer published before its
 *                 release store.
 *   - store_*   : memory_order_release -- earlier writes (slot fields, arena bytes) are visible
 *                 before the new index is.
 *   - fence()   : memory_order_seq_cst -- orders a store before a later load (the Dekker pattern
 *                 that sleep announcement and wake-up need; see PROTOCOL.md "Waking").
 *   - publish*  : release store, full fence, acquire load of the peer's sleep word, in one call,
 *                 because that exact sequence follows every publication.
 *
 * Blocking calls (futex_wait, spin_while_equal) release the GIL.  futex_wait retries EINTR only
 * while PyErr_CheckSignals() reports nothing, so Ctrl-C still interrupts it; its deadline is on
 * CLOCK_MONOTONIC.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ __volatile__("yield" ::: "memory")
#else
#define CPU_RELAX() atomic_signal_fence(memory_order_seq_cst)
#endif

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    char *base;
    Py_ssize_t len;
    int has_view;
} Mapping;

static int64_t
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Check that [off, off+size) lies in the mapping and off is size-aligned. */
static int
check_off(Mapping *self, Py_ssize_t off, Py_ssize_t size)
{
    if (!self->has_view) {
        PyErr_SetString(PyExc_ValueError, "mapping is released");
        return -1;
    }
    if (off < 0 || size > self->len || off > self->len - size) {
        PyErr_Format(PyExc_ValueError, "offset %zd (+%zd) outside mapping of %zd bytes", off,
                     size, self->len);
        return -1;
    }
    if (off % size != 0) {
        PyErr_Format(PyExc_ValueError, "offset %zd not aligned to %zd", off, size);
        return -1;
    }
    return 0;
}

#define U64(self, off) ((_Atomic uint64_t *)((self)->base + (off)))
#define U32(self, off) ((_Atomic uint32_t *)((self)->base + (off)))

static int
Mapping_init(Mapping *self, PyObject *args, PyObject *kwds)
{
    PyObject *obj;
    static char *kwlist[] = {"buffer", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:Mapping", kwlist, &obj))
        return -1;
    if (self->has_view) {
        PyBuffer_Release(&self->view);
        self->has_view = 0;
    }
    if (PyObject_GetBuffer(obj, &self->view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    self->has_view = 1;
    self->base = (char *)self->view.buf;
    self->len = self->view.len;
    if (((uintptr_t)self->base) % 64 != 0) {
        PyBuffer_Release(&self->view);
        self->has_view = 0;
        PyErr_SetString(PyExc_ValueError, "buffer must be 64-byte aligned");
        return -1;
    }
    return 0;
}

static void
Mapping_dealloc(Mapping *self)
{
    if (self->has_view)
        PyBuffer_Release(&self->view);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Mapping_release(Mapping *self, PyObject *Py_UNUSED(ignored))
{
    if (self->has_view) {
        PyBuffer_Release(&self->view);
        self->has_view = 0;
        self->base = NULL;
        self->len = 0;
    }
    Py_RETURN_NONE;
}

static PyObject *
Mapping_load_u64(Mapping *self, PyObject *arg)
{
    Py_ssize_t off = PyLong_AsSsize_t(arg);
    if (off == -1 && PyErr_Occurred())
        return NULL;
    if (check_off(self, off, 8) < 0)
        return NULL;
    /* acquire: pairs with the writer's release store of this word. */
    return PyLong_FromUnsignedLongLong(atomic_load_explicit(U64(self, off), memory_order_acquire));
}

static PyObject *
Mapping_load_u32(Mapping *self, PyObject *arg)
{
    Py_ssize_t off = PyLong_AsSsize_t(arg);
    if (off == -1 && PyErr_Occurred())
        return NULL;
    if (check_off(self, off, 4) < 0)
        return NULL;
    return PyLong_FromUnsignedLong(atomic_load_explicit(U32(self, off), memory_order_acquire));
}

static PyObject *
Mapping_store_u64(Mapping *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "store_u64(offset, value)");
        return NULL;
    }
    Py_ssize_t off = PyLong_AsSsize_t(args[0]);
    if (off == -1 && PyErr_Occurred())
        return NULL;
    unsigned long long v = PyLong_AsUnsignedLongLong(args[1]);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (check_off(self, off, 8) < 0)
        return NULL;
    /* release: everything written before is visible before this value is. */
    atomic_store_explicit(U64(self, off), (uint64_t)v, memory_order_release);
    Py_RETURN_NONE;
}

static PyObject *
Mapping_store_u32(Mapping *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "store_u32(offset, value)");
        return NULL;
    }
    Py_ssize_t off = PyLong_AsSsize_t(args[0]);
    if (off == -1 && PyErr_Occurred())
        return NULL;
    unsigned long v = PyLong_AsUnsignedLong(args[1]);
    if (v == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    if (v > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "value does not fit in 32 bits");
        return NULL;
    }
    if (check_off(self, off, 4) < 0)
        return NULL;
    atomic_store_explicit(U32(self, off), (uint32_t)v, memory_order_release);
    Py_RETURN_NONE;
}

static PyObject *
Mapping_fetch_add_u64(Mapping *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "fetch_add_u64(offset, delta)");
        return NULL;
    }
    Py_ssize_t off = PyLong_AsSsize_t(args[0]);
    if (off == -1 && PyErr_Occurred())
        return NULL;
    unsigned long long d = PyLong_AsUnsignedLongLong(args[1]);
    if (d == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (check_off(self, off, 8) < 0)
        return NULL;
    return PyLong_FromUnsignedLongLong(
        atomic_fetch_add_explicit(U64(self, off), (uint64_t)d, memory_order_acq_rel));
}

/*
 * publish(offset, value, peer_sleep_offset) -> peer sleep word
 *
 * Release-store `value` at `offset`, full fence, acquire-load the peer's 32-bit sleep word.
 * The fence is what makes "store index; load sleep flag" and the sleeper's "store sleep flag;
 * load index" impossible to both miss each other (store -> fence -> load on both sides).
 */
static PyObject *
Mapping_publish(Mapping *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "publish(offset, value, peer_sleep_offset)");
        return NULL;
    }
    Py_ssize_t off = PyLong_AsSsize_t(args[0]);
    if (off == -1 && PyErr_Occurred())
        return NULL;
    unsigned long long v = PyLong_AsUnsignedLongLong(args[1]);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t soff = PyLong_AsSsize_t(args[2]);
    if (soff == -1 && PyErr_Occurred())
        return NULL;
    if (check_off(self, off, 8) < 0 || check_off(self, soff, 4) < 0)
        return NULL;
    atomic_store_explicit(U64(self, off), (uint64_t)v, memory_order_release);
    atomic_thread_fence(memory_order_seq_cst);
    return PyLong_FromUnsignedLong(atomic_load_explicit(U32(self, soff), memory_order_acquire));
}

/*
 * publish_slot(slot_offset, id, kind, flags, length, offset, head_offset, head,
 *              peer_sleep_offset) -> peer sleep word
 *
 * Fill one 32-byte ring slot with plain stores (the consumer cannot look at it until the head
 * moves), then publish the new head exactly like publish().
 */
static PyObject *
Mapping_publish_slot(Mapping *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError,
                        "publish_slot(slot_offset, id, kind, flags, length, offset, head_offset, "
                        "head, peer_sleep_offset)");
        return NULL;
    }
    Py_ssize_t slot = PyLong_AsSsize_t(args[0]);
    unsigned long long id = PyLong_AsUnsignedLongLong(args[1]);
    long kind = PyLong_AsLong(args[2]);
    long flags = PyLong_AsLong(args[3]);
    unsigned long long length = PyLong_AsUnsignedLongLong(args[4]);
    unsigned long long aoff = PyLong_AsUnsignedLongLong(args[5]);
    Py_ssize_t hoff = PyLong_AsSsize_t(args[6]);
    unsigned long long head = PyLong_AsUnsignedLongLong(args[7]);
    Py_ssize_t soff = PyLong_AsSsize_t(args[8]);
    if (PyErr_Occurred())
        return NULL;
    if (kind < 0 || kind > 0xFFFF || flags < 0 || flags > 0xFFFF || length > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "slot field out of range");
        return NULL;
    }
    if (check_off(self, slot, 32) < 0 || check_off(self, hoff, 8) < 0 ||
        check_off(self, soff, 4) < 0)
        return NULL;
    char *p = self->base + slot;
    uint64_t id64 = id, off64 = aoff, zero = 0;
    uint16_t k16 = (uint16_t)kind, f16 = (uint16_t)flags;
    uint32_t l32 = (uint32_t)length;
    memcpy(p + 0, &id64, 8);
    memcpy(p + 8, &k16, 2);
    memcpy(p + 10, &f16, 2);
    memcpy(p + 12, &l32, 4);
    memcpy(p + 16, &off64, 8);
    memcpy(p + 24, &zero, 8);
    /* release: the slot fields above are visible before the head that covers them. */
    atomic_store_explicit(U64(self, hoff), (uint64_t)head, memory_order_release);
    atomic_thread_fence(memory_order_seq_cst);
    return PyLong_FromUnsignedLong(atomic_load_explicit(U32(self, soff), memory_order_acquire));
}

/*
 * read_slot(slot_offset) -> (id, kind, flags, length, offset, reserved)
 *
 * Copy one slot into locals exactly once.  The caller must have acquire-loaded the producer's
 * head covering this slot first; the caller validates every field.
 */
static PyObject *
Mapping_read_slot(Mapping *self, PyObject *arg)
{
    Py_ssize_t slot = PyLong_AsSsize_t(arg);
    if (slot == -1 && PyErr_Occurred())
        return NULL;
    if (check_off(self, slot, 32) < 0)
        return NULL;
    unsigned char local[32];
    /* One copy: a hostile peer rewriting the slot now cannot make later checks see other
       values than the ones validated. */
    memcpy(local, self->base + slot, 32);
    uint64_t id, off, res;
    uint16_t kind, flags;
    uint32_t length;
    memcpy(&id, local + 0, 8);
    memcpy(&kind, local + 8, 2);
    memcpy(&flags, local + 10, 2);
    memcpy(&length, local + 12, 4);
    memcpy(&off, local + 16, 8);
    memcpy(&res, local + 24, 8);
    return Py_BuildValue("(KIIkKK)", (unsigned long long)id, (unsigned int)kind,
                         (unsigned int)flags, (unsigned long)length, (unsigned long long)off,
                         (unsigned long long)res);
}

/*
 * spin_while_equal(offset, value, budget_ns) -> current value
 *
 * Acquire-load the u64 at `offset` until it differs from `value` or `budget_ns` nanoseconds
 * of spinning have passed; return the last value loaded.  The GIL is released while spinning
 * so other threads of the caller keep running.  A budget of 0 loads once.
 */
static PyObject *
Mapping_spin_while_equal(Mapping *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "spin_while_equal(offset, value, budget_ns)");
        return NULL;
    }
    Py_ssize_t off = PyLong_AsSsize_t(args[0]);
    unsigned long long value = PyLong_AsUnsignedLongLong(args[1]);
    long long budget = PyLong_AsLongLong(args[2]);
    if (PyErr_Occurred())
        return NULL;
    if (check_off(self, off, 8) < 0)
        return NULL;
    _Atomic uint64_t *w = U64(self, off);
    uint64_t cur = atomic_load_explicit(w, memory_order_acquire);
    if (cur != value || budget <= 0)
        return PyLong_FromUnsignedLongLong(cur);
    Py_BEGIN_ALLOW_THREADS
    int64_t deadline = now_ns() + budget;
    for (;;) {
        for (int i = 0; i < 64; i++) {
            CPU_RELAX();
            cur = atomic_load_explicit(w, memory_order_acquire);
            if (cur != value)
                goto done;
        }
        if (now_ns() >= deadline)
            break;
    }
done:;
    Py_END_ALLOW_THREADS
    return PyLong_FromUnsignedLongLong(cur);
}

/*
 * futex_wait(offset, expected, timeout) -> bool
 *
 * Sleep in FUTEX_WAIT (shared, not FUTEX_PRIVATE: the word is in memory shared with another
 * process) while the u32 at `offset` equals `expected`.  Returns True when woken or when the
 * word already differed, False when `timeout` seconds (None: no limit) passed.  EINTR: run
 * Python signal handlers; if one raised, propagate; otherwise retry with the time left.
 */
static PyObject *
Mapping_futex_wait(Mapping *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "futex_wait(offset, expected, timeout)");
        return NULL;
    }
    Py_ssize_t off = PyLong_AsSsize_t(args[0]);
    unsigned long expected = PyLong_AsUnsignedLong(args[1]);
    if (PyErr_Occurred())
        return NULL;
    double timeout = -1.0;
    if (args[2] != Py_None) {
        timeout = PyFloat_AsDouble(args[2]);
        if (timeout == -1.0 && PyErr_Occurred())
            return NULL;
        if (timeout < 0)
            timeout = 0;
    }
    if (check_off(self, off, 4) < 0)
        return NULL;
    int64_t deadline = timeout >= 0 ? now_ns() + (int64_t)(timeout * 1e9) : 0;
    for (;;) {
        struct timespec ts, *tsp = NULL;
        if (timeout >= 0) {
            int64_t left = deadline - now_ns();
            if (left <= 0)
                Py_RETURN_FALSE;
            ts.tv_sec = left / 1000000000LL;
            ts.tv_nsec = left % 1000000000LL;
            tsp = &ts;
        }
        long rc;
        int err;
        Py_BEGIN_ALLOW_THREADS
        rc = syscall(SYS_futex, (uint32_t *)(self->base + off), FUTEX_WAIT, (uint32_t)expected,
                     tsp, NULL, 0);
        err = errno;
        Py_END_ALLOW_THREADS
        if (rc == 0)
            Py_RETURN_TRUE;
        if (err == EAGAIN)
            Py_RETURN_TRUE; /* the word already changed: that is a wake-up */
        if (err == ETIMEDOUT)
            Py_RETURN_FALSE;
        if (err == EINTR) {
            if (PyErr_CheckSignals() < 0)
                return NULL;
            continue;
        }
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
}

/* futex_wake(offset, count) -> number of waiters woken. */
static PyObject *
Mapping_futex_wake(Mapping *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "futex_wake(offset, count)");
        return NULL;
    }
    Py_ssize_t off = PyLong_AsSsize_t(args[0]);
    long count = PyLong_AsLong(args[1]);
    if (PyErr_Occurred())
        return NULL;
    if (count < 1 || count > INT_MAX)
        count = INT_MAX;
    if (check_off(self, off, 4) < 0)
        return NULL;
    long rc = syscall(SYS_futex, (uint32_t *)(self->base + off), FUTEX_WAKE, (int)count, NULL,
                      NULL, 0);
    if (rc < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromLong(rc);
}

static PyObject *
Mapping_get_size(Mapping *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->has_view ? self->len : 0);
}

static PyObject *
Mapping_repr(Mapping *self)
{
    return PyUnicode_FromFormat("<zeus._native.Mapping %zd bytes%s>", self->len,
                                self->has_view ? "" : " released");
}

static PyMethodDef Mapping_methods[] = {
    {"release", (PyCFunction)Mapping_release, METH_NOARGS, "Drop the pinned buffer."},
    {"load_u64", (PyCFunction)Mapping_load_u64, METH_O, "Acquire-load a u64."},
    {"load_u32", (PyCFunction)Mapping_load_u32, METH_O, "Acquire-load a u32."},
    {"store_u64", (PyCFunction)(void (*)(void))Mapping_store_u64, METH_FASTCALL,
     "Release-store a u64."},
    {"store_u32", (PyCFunction)(void (*)(void))Mapping_store_u32, METH_FASTCALL,
     "Release-store a u32."},
    {"fetch_add_u64", (PyCFunction)(void (*)(void))Mapping_fetch_add_u64, METH_FASTCALL,
     "Atomic fetch-and-add on a u64 (acq_rel); returns the old value."},
    {"publish", (PyCFunction)(void (*)(void))Mapping_publish, METH_FASTCALL,
     "Release-store a u64, full fence, acquire-load the peer's u32 sleep word."},
    {"publish_slot", (PyCFunction)(void (*)(void))Mapping_publish_slot, METH_FASTCALL,
     "Fill a ring slot, release-store the head, fence, load the peer's sleep word."},
    {"read_slot", (PyCFunction)Mapping_read_slot, METH_O, "Copy one ring slot into a tuple."},
    {"spin_while_equal", (PyCFunction)(void (*)(void))Mapping_spin_while_equal, METH_FASTCALL,
     "Spin (GIL released) while a u64 equals a value, for at most budget_ns."},
    {"futex_wait", (PyCFunction)(void (*)(void))Mapping_futex_wait, METH_FASTCALL,
     "FUTEX_WAIT on a shared u32 while it equals expected (GIL released)."},
    {"futex_wake", (PyCFunction)(void (*)(void))Mapping_futex_wake, METH_FASTCALL,
     "FUTEX_WAKE waiters on a shared u32."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Mapping_getset[] = {
    {"size", (getter)Mapping_get_size, NULL, "Bytes pinned (0 once released).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject MappingType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "zeus._native.Mapping",
    .tp_basicsize = sizeof(Mapping),
    .tp_dealloc = (destructor)Mapping_dealloc,
    .tp_repr = (reprfunc)Mapping_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Atomic access, fences and futexes on a pinned, writable, 64-byte aligned buffer.",
    .tp_methods = Mapping_methods,
    .tp_getset = Mapping_getset,
    .tp_init = (initproc)Mapping_init,
    .tp_new = PyType_GenericNew,
};

static PyObject *
native_fence(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    atomic_thread_fence(memory_order_seq_cst);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"fence", native_fence, METH_NOARGS, "Full (sequentially consistent) memory fence."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "zeus._native",
    "Atomics, fences and futexes for Zeus's shared-memory channel (mechanism only).", -1,
    module_methods,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    if (PyType_Ready(&MappingType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&native_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&MappingType);
    if (PyModule_AddObject(m, "Mapping", (PyObject *)&MappingType) < 0) {
        Py_DECREF(&MappingType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
