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
#include <stdarg.h>
#include <linux/futex.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/prctl.h>
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

/* RequestHead's attribute names and "release", interned once at import (PyInit__native):
   a per-call PyObject_GetAttrString would build and hash a new str every time. */
static const char *const head_name_strs[] = {"method", "target", "headers", "http_version",
                                             "scheme", "client", "server"};
static PyObject *head_names[7];
static PyObject *str_release;

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    char *base;
    Py_ssize_t len;
    int has_view;
    int busy; /* calls running with the GIL released: release() must wait for them */
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
    if (self->busy) {
        PyErr_SetString(PyExc_BufferError, "mapping in use by a blocking call in another thread");
        return -1;
    }
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
    if (self->busy) {
        PyErr_SetString(PyExc_BufferError, "mapping in use by a blocking call in another thread");
        return NULL;
    }
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
    self->busy++;
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
    self->busy--;
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
    unsigned long long expected = PyLong_AsUnsignedLongLong(args[1]);
    if (PyErr_Occurred())
        return NULL;
    if (expected > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "expected value does not fit in 32 bits");
        return NULL;
    }
    double timeout = -1.0;
    if (args[2] != Py_None) {
        timeout = PyFloat_AsDouble(args[2]);
        if (timeout == -1.0 && PyErr_Occurred())
            return NULL;
        if (timeout != timeout) {
            PyErr_SetString(PyExc_ValueError, "timeout is NaN");
            return NULL;
        }
        if (timeout < 0)
            timeout = 0;
        if (timeout > 1e9)
            timeout = -1.0; /* over 31 years: no limit */
    }
    if (check_off(self, off, 4) < 0)
        return NULL;
    if (atomic_load_explicit(U32(self, off), memory_order_acquire) != (uint32_t)expected)
        Py_RETURN_TRUE; /* already changed: that is a wake-up, whatever the timeout */
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
        self->busy++;
        Py_BEGIN_ALLOW_THREADS
        rc = syscall(SYS_futex, (uint32_t *)(self->base + off), FUTEX_WAIT, (uint32_t)expected,
                     tsp, NULL, 0);
        err = errno;
        Py_END_ALLOW_THREADS
        self->busy--;
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
    if (count < 1) {
        PyErr_SetString(PyExc_ValueError, "futex_wake count must be >= 1");
        return NULL;
    }
    if (count > INT_MAX)
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


/* ======================================================================================
 * Endpoint: the hot path of one channel end.
 *
 * The rules are those of zeus.core.ring and zeus.core.arena (the executable specification,
 * differential-tested against this code); they are repeated here because a message costs a
 * few hundred nanoseconds in C and several microseconds as a chain of Python calls.  The
 * endpoint keeps its own counters in this struct and never reads back a word only it writes;
 * every value loaded from the peer is checked before use, and a violation raises
 * zeus.errors.PeerBrokenError.  Policy (when to wait, how long to spin, what a kind means)
 * stays in Python.
 * ====================================================================================== */

#define ARENA_ALIGN 64u
#define SLOT 32
#define ASLEEP 1u
#define DOORBELL 2u
#define WANT_DATA 4u  /* the sleeper waits for messages */
#define WANT_SPACE 8u /* the sleeper waits for ring slots or arena space */

static PyObject *PeerBrokenError = NULL;

typedef struct {
    uint64_t start, end;
    int released;
} LeaseRec;

typedef struct {
    PyObject_HEAD
    Mapping *map;
    /* out ring (we produce) */
    Py_ssize_t out_ring, head_word, peer_tail_word;
    uint64_t out_head, out_tail_cache, mask, slots;
    /* in ring (we consume) */
    Py_ssize_t in_ring, tail_word, peer_head_word;
    uint64_t in_tail, in_head_cache;
    /* out arena (we write) */
    Py_ssize_t out_arena, peer_freed_word;
    uint64_t out_size, a_head, a_freed, a_last, a_prev;
    int reserved;
    /* in arena (we read) */
    Py_ssize_t in_arena, freed_word;
    uint64_t in_size, r_expected, r_freed;
    LeaseRec *fifo;
    uint64_t fifo_cap, fifo_first, fifo_next; /* lease tokens are free-running indices */
    /* waking the peer */
    Py_ssize_t peer_sleep_word, peer_wake_word;
    uint32_t last_woken, wake_seq;
    int doorbell_fd;
    int defer_data;   /* defer_wakes(True): publications leave the wake to flush_wakes() */
    int data_pending; /* a deferred publication has not been followed by flush_wakes() */
    PyObject *in_view; /* memoryview of the in arena: Message.data slices it */
    PyObject *broken_msg; /* set once the peer broke the protocol */
    uint64_t kinds_mask; /* bit k set: kind k is valid */
    uint32_t flags_mask; /* flag bits that may be set */
    /* counters */
    unsigned long long msgs_out, bytes_out, msgs_in, bytes_in, wakes;
} Endpoint;

static inline uint64_t
align64(uint64_t n)
{
    return (n + ARENA_ALIGN - 1) & ~(uint64_t)(ARENA_ALIGN - 1);
}

/* The peer broke the protocol: raise PeerBrokenError, and latch it -- the endpoint refuses
   every later operation with the first reason (a broken channel stays dead). */
static void
set_broken(Endpoint *e, PyObject *msg)
{
    if (e->broken_msg == NULL) {
        Py_INCREF(msg);
        e->broken_msg = msg;
    }
    PyErr_SetObject(PeerBrokenError ? PeerBrokenError : PyExc_RuntimeError, msg);
}

static void
vbroken(Endpoint *e, const char *fmt, va_list va)
{
    PyObject *msg = PyUnicode_FromFormatV(fmt, va);
    if (msg) {
        set_broken(e, msg);
        Py_DECREF(msg);
    }
}

static PyObject *
broken(Endpoint *e, const char *fmt, ...)
{
    va_list va;
    va_start(va, fmt);
    vbroken(e, fmt, va);
    va_end(va);
    return NULL;
}

static int
broken_i(Endpoint *e, const char *fmt, ...)
{
    va_list va;
    va_start(va, fmt);
    vbroken(e, fmt, va);
    va_end(va);
    return -1;
}

/* After a publication: if the peer announced sleep (and we have not yet woken it for that
   announcement), bump its wake word and wake it by futex or by its doorbell eventfd. */
static void
wake_if_asleep(Endpoint *e, uint32_t peer, uint32_t want)
{
    if (!(peer & ASLEEP)) {
        e->last_woken = 0; /* awake: the next announcement is new, whatever its epoch */
        return;
    }
    if (!(peer & want) || peer == e->last_woken)
        return;
    e->last_woken = peer;
    e->wake_seq++;
    char *base = e->map->base;
    atomic_store_explicit((_Atomic uint32_t *)(base + e->peer_wake_word), e->wake_seq,
                          memory_order_release);
    e->wakes++;
    if ((peer & DOORBELL) && e->doorbell_fd >= 0) {
        uint64_t one = 1;
        ssize_t rc = write(e->doorbell_fd, &one, sizeof one);
        (void)rc; /* EAGAIN: counter saturated, the front will look anyway */
    } else {
        syscall(SYS_futex, (uint32_t *)(base + e->peer_wake_word), FUTEX_WAKE, 1, NULL, NULL, 0);
    }
}

static inline uint32_t
publish_u64(Endpoint *e, Py_ssize_t word, uint64_t value)
{
    char *base = e->map->base;
    atomic_store_explicit((_Atomic uint64_t *)(base + word), value, memory_order_release);
    atomic_thread_fence(memory_order_seq_cst); /* store -> fence -> load: see PROTOCOL.md */
    return atomic_load_explicit((_Atomic uint32_t *)(base + e->peer_sleep_word),
                                memory_order_acquire);
}

static int
Endpoint_init(Endpoint *self, PyObject *args, PyObject *kwds)
{
    static char *kw[] = {"mapping", "slots", "out_ring", "in_ring", "out_arena", "out_size",
                         "in_arena", "in_size", "head_word", "peer_tail_word", "tail_word",
                         "peer_head_word", "freed_word", "peer_freed_word", "peer_sleep_word",
                         "peer_wake_word", "kinds_mask", "flags_mask", "in_view", "doorbell_fd",
                         NULL};
    PyObject *map;
    unsigned long long slots, out_size, in_size;
    Py_ssize_t out_ring, in_ring, out_arena, in_arena, hw, ptw, tw, phw, fw, pfw, psw, pww;
    int doorbell = -1;
    unsigned long long kinds_mask;
    unsigned int flags_mask;
    PyObject *in_view;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!KnnnKnKnnnnnnnnKIO!|i:Endpoint", kw,
                                     &MappingType, &map, &slots, &out_ring, &in_ring, &out_arena,
                                     &out_size, &in_arena, &in_size, &hw, &ptw, &tw, &phw, &fw,
                                     &pfw, &psw, &pww, &kinds_mask, &flags_mask,
                                     &PyMemoryView_Type, &in_view, &doorbell))
        return -1;
    if (PyObject_Length(in_view) != (Py_ssize_t)in_size) {
        PyErr_SetString(PyExc_ValueError, "in_view must cover exactly the in arena");
        return -1;
    }
    Mapping *m = (Mapping *)map;
    if (slots == 0 || (slots & (slots - 1)) || out_size % ARENA_ALIGN || in_size % ARENA_ALIGN ||
        out_size == 0 || in_size == 0) {
        PyErr_SetString(PyExc_ValueError, "bad endpoint geometry");
        return -1;
    }
    if (check_off(m, out_ring, SLOT) < 0 || check_off(m, in_ring, SLOT) < 0 ||
        out_ring + (Py_ssize_t)(slots * SLOT) > m->len ||
        in_ring + (Py_ssize_t)(slots * SLOT) > m->len || out_arena < 0 || in_arena < 0 ||
        out_arena + (Py_ssize_t)out_size > m->len || in_arena + (Py_ssize_t)in_size > m->len ||
        check_off(m, hw, 8) < 0 || check_off(m, ptw, 8) < 0 || check_off(m, tw, 8) < 0 ||
        check_off(m, phw, 8) < 0 || check_off(m, fw, 8) < 0 || check_off(m, pfw, 8) < 0 ||
        check_off(m, psw, 4) < 0 || check_off(m, pww, 4) < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "endpoint geometry outside the mapping");
        return -1;
    }
    Py_INCREF(map);
    Py_XSETREF(self->map, m);
    Py_INCREF(in_view);
    Py_XSETREF(self->in_view, in_view);
    self->slots = slots;
    self->mask = slots - 1;
    self->out_ring = out_ring;
    self->in_ring = in_ring;
    self->out_arena = out_arena;
    self->out_size = out_size;
    self->in_arena = in_arena;
    self->in_size = in_size;
    self->head_word = hw;
    self->peer_tail_word = ptw;
    self->tail_word = tw;
    self->peer_head_word = phw;
    self->freed_word = fw;
    self->peer_freed_word = pfw;
    self->peer_sleep_word = psw;
    self->peer_wake_word = pww;
    self->doorbell_fd = doorbell;
    self->kinds_mask = kinds_mask;
    self->flags_mask = flags_mask;
    self->fifo_cap = 64;
    PyMem_Free(self->fifo);
    self->fifo = PyMem_Calloc(self->fifo_cap, sizeof(LeaseRec));
    if (!self->fifo) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void
Endpoint_dealloc(Endpoint *self)
{
    Py_XDECREF(self->map);
    Py_XDECREF(self->in_view);
    Py_XDECREF(self->broken_msg);
    PyMem_Free(self->fifo);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static inline int
usable(Endpoint *e)
{
    if (!e->map || !e->map->has_view) {
        PyErr_SetString(PyExc_ValueError, "endpoint's mapping is released");
        return 0;
    }
    if (e->broken_msg) {
        PyErr_SetObject(PeerBrokenError ? PeerBrokenError : PyExc_RuntimeError, e->broken_msg);
        return 0;
    }
    return 1;
}

/* Room in the out ring?  1 yes, 0 no, -1 error (peer broke). */
static int
ring_room(Endpoint *e)
{
    if (e->out_head - e->out_tail_cache < e->slots)
        return 1;
    uint64_t t = atomic_load_explicit((_Atomic uint64_t *)(e->map->base + e->peer_tail_word),
                                      memory_order_acquire);
    if (t < e->out_tail_cache || t > e->out_head) {
        broken(e, "ring tail %llu outside [%llu, %llu]", (unsigned long long)t,
               (unsigned long long)e->out_tail_cache, (unsigned long long)e->out_head);
        return -1;
    }
    e->out_tail_cache = t;
    return e->out_head - t < e->slots;
}

/* Allocate n bytes in the out arena: offset >= 0, -1 no space yet, -2 error. */
static int64_t
arena_alloc(Endpoint *e, uint64_t n)
{
    if (n == 0) {
        e->a_prev = e->a_last = e->a_head;
        return 0;
    }
    if (n > e->out_size / 2 || n > UINT32_MAX) {
        /* Half the part at most: then an allocation always fits once everything before it is
           released, wherever the head is (either before the end or after the wrap). */
        PyErr_Format(PyExc_ValueError, "allocation of %llu bytes; at most half the arena (%llu)",
                     (unsigned long long)n, (unsigned long long)(e->out_size / 2));
        return -2;
    }
    uint64_t a = align64(n), room = e->out_size - e->a_head % e->out_size;
    uint64_t start = a > room ? e->a_head + room : e->a_head;
    if (start + a - e->a_freed > e->out_size) {
        uint64_t f = atomic_load_explicit(
            (_Atomic uint64_t *)(e->map->base + e->peer_freed_word), memory_order_acquire);
        if (f < e->a_freed || f > e->a_head) {
            broken(e, "arena release position %llu outside [%llu, %llu]", (unsigned long long)f,
                   (unsigned long long)e->a_freed, (unsigned long long)e->a_head);
            return -2;
        }
        e->a_freed = f;
        if (start + a - f > e->out_size)
            return -1;
    }
    e->a_prev = e->a_head;
    e->a_last = start;
    e->a_head = start + a;
    return (int64_t)(start % e->out_size);
}

/* Write one slot at the ring head without publishing it (publish_out does). */
static void
put_slot(Endpoint *e, uint64_t id, uint16_t kind, uint16_t flags, uint32_t len, uint64_t off)
{
    char *p = e->map->base + e->out_ring + (e->out_head & e->mask) * SLOT;
    uint64_t zero = 0;
    memcpy(p + 0, &id, 8);
    memcpy(p + 8, &kind, 2);
    memcpy(p + 10, &flags, 2);
    memcpy(p + 12, &len, 4);
    memcpy(p + 16, &off, 8);
    memcpy(p + 24, &zero, 8);
    e->out_head++;
    e->msgs_out++;
    e->bytes_out += len;
}

/* Publish the slots put so far, and wake the peer for them (or leave that to flush_wakes). */
static void
publish_out(Endpoint *e)
{
    /* release: slot fields and arena bytes are visible before the head that covers them */
    uint32_t peer = publish_u64(e, e->head_word, e->out_head);
    if (e->defer_data)
        e->data_pending = 1; /* flush_wakes() loads the peer's word again and wakes it */
    else
        wake_if_asleep(e, peer, WANT_DATA);
}

static void
publish_slot_ep(Endpoint *e, uint64_t id, uint16_t kind, uint16_t flags, uint32_t len,
                uint64_t off)
{
    put_slot(e, id, kind, flags, len, off);
    publish_out(e);
}

static int
parse_hdr(PyObject *const *args, unsigned long long *id, unsigned int *kind, unsigned int *flags)
{
    *id = PyLong_AsUnsignedLongLong(args[0]);
    unsigned long k = PyLong_AsUnsignedLong(args[1]);
    unsigned long f = PyLong_AsUnsignedLong(args[2]);
    if (PyErr_Occurred())
        return -1;
    if (k > 0xFFFF || f > 0xFFFF) {
        PyErr_SetString(PyExc_OverflowError, "kind and flags are 16-bit");
        return -1;
    }
    *kind = (unsigned int)k;
    *flags = (unsigned int)f;
    return 0;
}

/* What we send must pass the peer's validation: refuse it here (ValueError, our bug) rather
   than have the peer declare the channel broken. */
static int
check_outgoing(Endpoint *e, unsigned int kind, unsigned int flags, unsigned long long n)
{
    if (kind >= 64 || !((e->kinds_mask >> kind) & 1) || (flags & ~e->flags_mask) ||
        (flags & 3u) == 3u) {
        PyErr_Format(PyExc_ValueError, "invalid message kind %u or flags 0x%x", kind, flags);
        return -1;
    }
    if (n > e->out_size / 2 || n > UINT32_MAX) {
        PyErr_Format(PyExc_ValueError, "message of %llu bytes; at most half the arena (%llu)",
                     n, (unsigned long long)(e->out_size / 2));
        return -1;
    }
    return 0;
}

/* send(id, kind, flags, data) -> bool: False if the ring or the arena is full. */
static PyObject *
Endpoint_send(Endpoint *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "send(id, kind, flags, data)");
        return NULL;
    }
    unsigned long long id;
    unsigned int kind, flags;
    if (parse_hdr(args, &id, &kind, &flags) < 0 || !usable(self))
        return NULL;
    if (self->reserved) {
        PyErr_SetString(PyExc_RuntimeError, "a reservation is outstanding");
        return NULL;
    }
    Py_buffer b;
    if (PyObject_GetBuffer(args[3], &b, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    PyObject *res = NULL;
    if (check_outgoing(self, kind, flags, (unsigned long long)b.len) < 0)
        goto out;
    int room = ring_room(self);
    if (room < 0)
        goto out;
    if (room == 0) {
        res = Py_False;
        goto out;
    }
    int64_t off = arena_alloc(self, (uint64_t)b.len);
    if (off == -2)
        goto out;
    if (off == -1) {
        res = Py_False;
        goto out;
    }
    if (b.len > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "message longer than 4 GiB");
        goto out;
    }
    if (b.len)
        memcpy(self->map->base + self->out_arena + off, b.buf, (size_t)b.len);
    publish_slot_ep(self, id, (uint16_t)kind, (uint16_t)flags, (uint32_t)b.len, (uint64_t)off);
    res = Py_True;
out:
    PyBuffer_Release(&b);
    Py_XINCREF(res);
    return res;
}

/* reserve(n) -> offset in the out arena, or -1 if the ring or the arena is full. */
static PyObject *
Endpoint_reserve(Endpoint *self, PyObject *arg)
{
    unsigned long long n = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred() || !usable(self))
        return NULL;
    if (self->reserved) {
        PyErr_SetString(PyExc_RuntimeError, "a reservation is already outstanding");
        return NULL;
    }
    if (n > self->out_size / 2 || n > UINT32_MAX) {
        PyErr_Format(PyExc_ValueError, "reservation of %llu bytes; at most half the arena (%llu)",
                     n, (unsigned long long)(self->out_size / 2));
        return NULL;
    }
    int room = ring_room(self);
    if (room < 0)
        return NULL;
    if (room == 0)
        return PyLong_FromLong(-1);
    int64_t off = arena_alloc(self, n);
    if (off == -2)
        return NULL;
    if (off >= 0)
        self->reserved = 1;
    return PyLong_FromLongLong(off);
}

/* commit(id, kind, flags, length): publish the outstanding reservation, trimmed to length. */
static PyObject *
Endpoint_commit(Endpoint *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "commit(id, kind, flags, length)");
        return NULL;
    }
    unsigned long long id;
    unsigned int kind, flags;
    if (parse_hdr(args, &id, &kind, &flags) < 0 || !usable(self))
        return NULL;
    unsigned long long n = PyLong_AsUnsignedLongLong(args[3]);
    if (PyErr_Occurred())
        return NULL;
    if (!self->reserved) {
        PyErr_SetString(PyExc_RuntimeError, "no reservation to commit");
        return NULL;
    }
    if (check_outgoing(self, kind, flags, n) < 0)
        return NULL;
    uint64_t off;
    if (n == 0) {
        self->a_head = self->a_prev; /* a zero-length message takes no space */
        off = 0;
    } else {
        uint64_t end = self->a_last + align64(n);
        if (end > self->a_head) {
            PyErr_SetString(PyExc_ValueError, "commit longer than the reservation");
            return NULL;
        }
        self->a_head = end;
        off = self->a_last % self->out_size;
    }
    self->reserved = 0;
    publish_slot_ep(self, id, (uint16_t)kind, (uint16_t)flags, (uint32_t)n, off);
    Py_RETURN_NONE;
}

typedef struct {
    uint64_t id, off;
    uint32_t len;
    uint16_t kind, flags;
    long long token;
} Taken;

/* Take the next slot after validating it: 1 taken, 0 ring empty, -1 error set.
   token is -1 for a zero-length message (no lease). */
static int
take(Endpoint *self, Taken *t)
{
    if (!usable(self))
        return -1;
    char *base = self->map->base;
    if (self->in_head_cache == self->in_tail) {
        uint64_t h = atomic_load_explicit((_Atomic uint64_t *)(base + self->peer_head_word),
                                          memory_order_acquire);
        if (h < self->in_head_cache || h - self->in_tail > self->slots)
            return broken_i(self, "ring head %llu outside [%llu, %llu]", (unsigned long long)h,
                          (unsigned long long)self->in_head_cache,
                          (unsigned long long)(self->in_tail + self->slots));
        self->in_head_cache = h;
        if (h == self->in_tail)
            return 0;
    }
    uint64_t seq = self->in_tail;
    unsigned char local[SLOT];
    memcpy(local, base + self->in_ring + (seq & self->mask) * SLOT, SLOT); /* copy once */
    uint64_t id, off, reserved;
    uint16_t kind, flags;
    uint32_t len;
    memcpy(&id, local, 8);
    memcpy(&kind, local + 8, 2);
    memcpy(&flags, local + 10, 2);
    memcpy(&len, local + 12, 4);
    memcpy(&off, local + 16, 8);
    memcpy(&reserved, local + 24, 8);
    if (kind >= 64 || !((self->kinds_mask >> kind) & 1) || (flags & ~self->flags_mask) ||
        (flags & 3u) == 3u || reserved)
        return broken_i(self, "slot %llu: kind %u, flags 0x%x, reserved %llu invalid",
                      (unsigned long long)seq, kind, flags, (unsigned long long)reserved);
    long long token = -1;
    if (len == 0) {
        if (off != 0)
            return broken_i(self, "slot %llu: zero-length message with offset %llu",
                          (unsigned long long)seq, (unsigned long long)off);
    } else {
        uint64_t size = self->in_size, pos = self->r_expected;
        uint64_t room = size - pos % size, a = align64(len), start;
        if (len > size)
            return broken_i(self, "slot %llu: message of %u bytes in an arena of %llu",
                          (unsigned long long)seq, len, (unsigned long long)size);
        if (off == pos % size && a <= room)
            start = pos;
        else if (off == 0)
            start = pos + room; /* the writer skipped the rest of the part */
        else
            return broken_i(self, "slot %llu: message at offset %llu, expected %llu or 0 (length %u)",
                          (unsigned long long)seq, (unsigned long long)off,
                          (unsigned long long)(pos % size), len);
        uint64_t end = start + a;
        if (end - self->r_freed > size)
            return broken_i(self, "slot %llu: message ends at %llu, past released %llu + size",
                          (unsigned long long)seq, (unsigned long long)end,
                          (unsigned long long)self->r_freed);
        if (self->fifo_next - self->fifo_first == self->fifo_cap) {
            uint64_t ncap = self->fifo_cap * 2;
            LeaseRec *nf = PyMem_Calloc(ncap, sizeof(LeaseRec));
            if (!nf) {
                PyErr_NoMemory();
                return -1;
            }
            for (uint64_t i = self->fifo_first; i < self->fifo_next; i++)
                nf[i & (ncap - 1)] = self->fifo[i & (self->fifo_cap - 1)];
            PyMem_Free(self->fifo);
            self->fifo = nf;
            self->fifo_cap = ncap;
        }
        LeaseRec *r = &self->fifo[self->fifo_next & (self->fifo_cap - 1)];
        r->start = start;
        r->end = end;
        r->released = 0;
        token = (long long)self->fifo_next++;
        self->r_expected = end;
    }
    self->in_tail = seq + 1;
    self->msgs_in++;
    self->bytes_in += len;
    wake_if_asleep(self, publish_u64(self, self->tail_word, self->in_tail), WANT_SPACE);
    t->id = id;
    t->off = off;
    t->len = len;
    t->kind = kind;
    t->flags = flags;
    t->token = token;
    return 1;
}

static PyObject *make_message(Endpoint *self, Taken *t);

/* recv() -> Message, or None when the ring is empty. */
static PyObject *
Endpoint_recv(Endpoint *self, PyObject *Py_UNUSED(ignored))
{
    Taken t = {0};
    int rc = take(self, &t);
    if (rc < 0)
        return NULL;
    if (rc == 0)
        Py_RETURN_NONE;
    return make_message(self, &t);
}

/* spin_recv(budget_ns) -> Message or None: spin (GIL released) until the peer publishes or
   the budget is spent, then take the next message if there is one. */
static PyObject *
Endpoint_spin_recv(Endpoint *self, PyObject *arg)
{
    long long budget = PyLong_AsLongLong(arg);
    if (budget == -1 && PyErr_Occurred())
        return NULL;
    if (!usable(self))
        return NULL;
    if (self->in_head_cache == self->in_tail && budget > 0) {
        _Atomic uint64_t *w = (_Atomic uint64_t *)(self->map->base + self->peer_head_word);
        uint64_t seen = self->in_head_cache;
        Mapping *map = self->map;
        map->busy++;
        Py_BEGIN_ALLOW_THREADS
        int64_t deadline = now_ns() + budget;
        for (;;) {
            int i;
            for (i = 0; i < 64; i++) {
                CPU_RELAX();
                if (atomic_load_explicit(w, memory_order_relaxed) != seen)
                    break;
            }
            if (i < 64 || now_ns() >= deadline)
                break;
        }
        Py_END_ALLOW_THREADS
        map->busy--;
    }
    return Endpoint_recv(self, NULL);
}



/* Release a lease: 0 ok, -1 error set. */
static int
release_lease(Endpoint *self, long long token)
{
    if (token < 0)
        return 0;
    uint64_t t = (uint64_t)token;
    if (t < self->fifo_first)
        return 0; /* already released and popped */
    if (t >= self->fifo_next) {
        PyErr_SetString(PyExc_ValueError, "unknown lease");
        return -1;
    }
    uint64_t cm = self->fifo_cap - 1;
    self->fifo[t & cm].released = 1;
    if (t != self->fifo_first)
        return 0;
    while (self->fifo_first < self->fifo_next && self->fifo[self->fifo_first & cm].released)
        self->fifo_first++;
    uint64_t freed = self->fifo_first < self->fifo_next ? self->fifo[self->fifo_first & cm].start
                                                        : self->r_expected;
    self->r_freed = freed;
    if (self->map && self->map->has_view)
        wake_if_asleep(self, publish_u64(self, self->freed_word, freed), WANT_SPACE);
    return 0;
}

/* release(lease): the reader is done with a message's bytes (any order; idempotent). */
static PyObject *
Endpoint_release(Endpoint *self, PyObject *arg)
{
    long long token = PyLong_AsLongLong(arg);
    if (token == -1 && PyErr_Occurred())
        return NULL;
    if (release_lease(self, token) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* ---- Message: a received message whose data is a memoryview into the arena ---- */

typedef struct {
    PyObject_HEAD
    Endpoint *ep;
    PyObject *data;
    unsigned long long id;
    unsigned int kind, flags;
    long long token;
} Message;

static PyTypeObject MessageType;

static PyObject *
make_message(Endpoint *self, Taken *t)
{
    PyObject *data = PySequence_GetSlice(self->in_view, (Py_ssize_t)t->off,
                                         (Py_ssize_t)(t->off + t->len));
    if (!data) {
        release_lease(self, t->token);
        return NULL;
    }
    Message *m = PyObject_New(Message, &MessageType);
    if (!m) {
        Py_DECREF(data);
        release_lease(self, t->token);
        return NULL;
    }
    Py_INCREF(self);
    m->ep = self;
    m->data = data;
    m->id = t->id;
    m->kind = t->kind;
    m->flags = t->flags;
    m->token = t->token;
    return (PyObject *)m;
}

static PyObject *
Message_release(Message *self, PyObject *Py_UNUSED(ignored))
{
    long long token = self->token;
    if (token >= 0) {
        self->token = -1;
        /* Make the view unusable; if the application exported it, it must not use it. */
        PyObject *r = PyObject_CallMethodNoArgs(self->data, str_release);
        if (r)
            Py_DECREF(r);
        else
            PyErr_Clear();
        if (release_lease(self->ep, token) < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Message_enter(Message *self, PyObject *Py_UNUSED(ignored))
{
    Py_INCREF(self);
    return (PyObject *)self;
}

static PyObject *
Message_exit(Message *self, PyObject *Py_UNUSED(args))
{
    PyObject *r = Message_release(self, NULL);
    if (!r)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_FALSE;
}

static void
Message_dealloc(Message *self)
{
    /* A message dropped without release() gives its space back now, or the arena would leak
       and the sender would stall.  A slice of `data` kept beyond the message's life may then
       see newer bytes: keep bytes(msg.data) instead, or keep the message. */
    if (self->token >= 0 && self->ep) {
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        if (release_lease(self->ep, self->token) < 0)
            PyErr_WriteUnraisable((PyObject *)self);
        PyErr_Restore(et, ev, tb);
    }
    Py_XDECREF(self->ep);
    Py_XDECREF(self->data);
    PyObject_Free(self);
}

static PyObject *
Message_get_id(Message *self, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLongLong(self->id);
}
static PyObject *
Message_get_kind(Message *self, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLong(self->kind);
}
static PyObject *
Message_get_flags(Message *self, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLong(self->flags);
}
static PyObject *
Message_get_data(Message *self, void *Py_UNUSED(c))
{
    Py_INCREF(self->data);
    return self->data;
}
static PyObject *
Message_get_more(Message *self, void *Py_UNUSED(c))
{
    return PyBool_FromLong(self->flags & 1u);
}
static PyObject *
Message_get_end(Message *self, void *Py_UNUSED(c))
{
    return PyBool_FromLong(self->flags & 2u);
}

static PyObject *
Message_repr(Message *self)
{
    return PyUnicode_FromFormat("<Message id=%llu kind=%u flags=0x%x%s>", self->id, self->kind,
                                self->flags, self->token >= 0 ? " live" : "");
}

static PyMethodDef Message_methods[] = {
    {"release", (PyCFunction)Message_release, METH_NOARGS,
     "Give the bytes back to the sender's arena (idempotent); data is unusable after."},
    {"__enter__", (PyCFunction)Message_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)Message_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Message_getset[] = {
    {"id", (getter)Message_get_id, NULL, "64-bit request ID.", NULL},
    {"kind", (getter)Message_get_kind, NULL, "Message kind (zeus.Kind).", NULL},
    {"flags", (getter)Message_get_flags, NULL, "Flag bits (zeus.Flag).", NULL},
    {"data", (getter)Message_get_data, NULL, "The payload: a memoryview into the arena.", NULL},
    {"more", (getter)Message_get_more, NULL, "Another chunk of this message follows.", NULL},
    {"end", (getter)Message_get_end, NULL, "Last message of this ID in this direction.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject MessageType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "zeus._native.Message",
    .tp_basicsize = sizeof(Message),
    .tp_dealloc = (destructor)Message_dealloc,
    .tp_repr = (reprfunc)Message_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A received message; data points into shared memory until release().",
    .tp_methods = Message_methods,
    .tp_getset = Message_getset,
};

/* refresh() -> (peer_head, peer_tail, peer_freed, changed): reload, check and cache the
   peer's three progress words; `changed` tells whether any moved since last seen (then the
   caller must retry before sleeping: the news is already here). */
/* Reload, check and cache the peer's three progress words.  *moved gets bit 0 if the head
   moved (news for a receiver), bit 1 if the tail or the release position moved (news for a
   sender).  0 on success, -1 with PeerBrokenError set. */
static int
do_refresh(Endpoint *self, uint64_t *hp, uint64_t *tp, uint64_t *fp, int *moved)
{
    if (!usable(self))
        return -1;
    char *base = self->map->base;
    uint64_t h = atomic_load_explicit((_Atomic uint64_t *)(base + self->peer_head_word),
                                      memory_order_acquire);
    uint64_t t = atomic_load_explicit((_Atomic uint64_t *)(base + self->peer_tail_word),
                                      memory_order_acquire);
    uint64_t f = atomic_load_explicit((_Atomic uint64_t *)(base + self->peer_freed_word),
                                      memory_order_acquire);
    if (h < self->in_head_cache || h - self->in_tail > self->slots)
        return broken_i(self, "ring head %llu outside [%llu, %llu]", (unsigned long long)h,
                        (unsigned long long)self->in_head_cache,
                        (unsigned long long)(self->in_tail + self->slots));
    if (t < self->out_tail_cache || t > self->out_head)
        return broken_i(self, "ring tail %llu outside [%llu, %llu]", (unsigned long long)t,
                        (unsigned long long)self->out_tail_cache,
                        (unsigned long long)self->out_head);
    if (f < self->a_freed || f > self->a_head)
        return broken_i(self, "arena release position %llu outside [%llu, %llu]",
                        (unsigned long long)f, (unsigned long long)self->a_freed,
                        (unsigned long long)self->a_head);
    *moved = (h != self->in_head_cache) | ((t != self->out_tail_cache || f != self->a_freed) << 1);
    self->in_head_cache = h;
    self->out_tail_cache = t;
    self->a_freed = f;
    *hp = h;
    *tp = t;
    *fp = f;
    return 0;
}

/* refresh() -> (peer_head, peer_tail, peer_freed, changed): reload, check and cache the
   peer's three progress words; `changed` tells whether any moved since last seen (then the
   caller must retry before sleeping: the news is already here). */
static PyObject *
Endpoint_refresh(Endpoint *self, PyObject *Py_UNUSED(ignored))
{
    uint64_t h, t, f;
    int moved;
    if (do_refresh(self, &h, &t, &f, &moved) < 0)
        return NULL;
    return Py_BuildValue("(KKKO)", (unsigned long long)h, (unsigned long long)t,
                         (unsigned long long)f, moved ? Py_True : Py_False);
}

/* refresh_moved() -> (peer_head, peer_tail, peer_freed, moved): as refresh(), with `moved`
   bit 0 = the head moved (messages), bit 1 = the tail or release position moved (space). */
static PyObject *
Endpoint_refresh_moved(Endpoint *self, PyObject *Py_UNUSED(ignored))
{
    uint64_t h, t, f;
    int moved;
    if (do_refresh(self, &h, &t, &f, &moved) < 0)
        return NULL;
    return Py_BuildValue("(KKKi)", (unsigned long long)h, (unsigned long long)t,
                         (unsigned long long)f, moved);
}

/* prepare_sleep(sleep_word, wake_word, peer_state_word, closed, word, awake) -> int:
   Channel.prepare_sleep's sequence in one call.  -1: news (a move the sleeper waits for, as
   `word` says, or the peer CLOSED) before announcing anything; -2: announced `word`, then
   found news after the fence and withdrew (stored `awake`); else the wake sequence to sleep
   on, with `word` published in the sleep word.  Store, full fence, re-check (PROTOCOL.md,
   "Waking"). */
static PyObject *
Endpoint_prepare_sleep(Endpoint *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "prepare_sleep(sleep_word, wake_word, peer_state_word, closed, word, awake)");
        return NULL;
    }
    Py_ssize_t sw = PyLong_AsSsize_t(args[0]), ww = PyLong_AsSsize_t(args[1]),
               pw = PyLong_AsSsize_t(args[2]);
    unsigned long closed = PyLong_AsUnsignedLong(args[3]), word = PyLong_AsUnsignedLong(args[4]),
                  awake = PyLong_AsUnsignedLong(args[5]);
    if (PyErr_Occurred())
        return NULL;
    if (!usable(self) || check_off(self->map, sw, 4) < 0 || check_off(self->map, ww, 4) < 0 ||
        check_off(self->map, pw, 4) < 0)
        return NULL;
    uint64_t h, t, f;
    int moved;
    if (do_refresh(self, &h, &t, &f, &moved) < 0)
        return NULL;
    int want = ((word & WANT_DATA) ? 1 : 0) | ((word & WANT_SPACE) ? 2 : 0);
    Mapping *m = self->map;
    if ((moved & want) || atomic_load_explicit(U32(m, pw), memory_order_acquire) == closed)
        return PyLong_FromLong(-1);
    uint32_t seq = atomic_load_explicit(U32(m, ww), memory_order_acquire);
    atomic_store_explicit(U32(m, sw), (uint32_t)word, memory_order_release);
    atomic_thread_fence(memory_order_seq_cst);
    if (((word & WANT_DATA) &&
         atomic_load_explicit(U64(m, self->peer_head_word), memory_order_acquire) != h) ||
        ((word & WANT_SPACE) &&
         (atomic_load_explicit(U64(m, self->peer_tail_word), memory_order_acquire) != t ||
          atomic_load_explicit(U64(m, self->peer_freed_word), memory_order_acquire) != f)) ||
        atomic_load_explicit(U32(m, pw), memory_order_acquire) == closed) {
        atomic_store_explicit(U32(m, sw), (uint32_t)awake, memory_order_release);
        return PyLong_FromLong(-2);
    }
    return PyLong_FromUnsignedLong(seq);
}

/* wake_peer(): wake the peer unconditionally (after publishing CLOSED): bump its wake word,
   FUTEX_WAKE every waiter, and ring the doorbell if there is one. */
static PyObject *
Endpoint_wake_peer(Endpoint *self, PyObject *Py_UNUSED(ignored))
{
    /* Works on a broken endpoint too: closing must still wake the peer. */
    if (!self->map || !self->map->has_view) {
        PyErr_SetString(PyExc_ValueError, "endpoint's mapping is released");
        return NULL;
    }
    char *base = self->map->base;
    self->wake_seq++;
    atomic_store_explicit((_Atomic uint32_t *)(base + self->peer_wake_word), self->wake_seq,
                          memory_order_release);
    atomic_thread_fence(memory_order_seq_cst);
    syscall(SYS_futex, (uint32_t *)(base + self->peer_wake_word), FUTEX_WAKE, INT_MAX, NULL,
            NULL, 0);
    if (self->doorbell_fd >= 0) {
        uint64_t one = 1;
        ssize_t rc = write(self->doorbell_fd, &one, sizeof one);
        (void)rc;
    }
    self->wakes++;
    Py_RETURN_NONE;
}

/* defer_wakes(flag): with flag, publishing a message does not wake a sleeping peer; the
   caller calls flush_wakes() once it has published a batch, so a peer asleep gets one wake
   for the batch instead of being woken by the first message and going back to sleep before
   the next.  Space publications (tail, release position) still wake at once. */
static PyObject *
Endpoint_defer_wakes(Endpoint *self, PyObject *arg)
{
    int flag = PyObject_IsTrue(arg);
    if (flag < 0)
        return NULL;
    self->defer_data = flag;
    Py_RETURN_NONE;
}

/* flush_wakes(): after deferred publications, wake the peer if it announced sleep.  The
   publications' own store-fence-load already happened; this loads the peer's sleep word
   again after another full fence, so a peer that announced sleep since is woken too (its
   re-check after its announcement either saw our head move, or we see its announcement). */
static PyObject *
Endpoint_flush_wakes(Endpoint *self, PyObject *Py_UNUSED(ignored))
{
    if (!self->data_pending)
        Py_RETURN_NONE;
    if (!self->map || !self->map->has_view) {
        PyErr_SetString(PyExc_ValueError, "endpoint's mapping is released");
        return NULL;
    }
    self->data_pending = 0;
    char *base = self->map->base;
    atomic_thread_fence(memory_order_seq_cst);
    uint32_t peer = atomic_load_explicit((_Atomic uint32_t *)(base + self->peer_sleep_word),
                                         memory_order_acquire);
    wake_if_asleep(self, peer, WANT_DATA);
    Py_RETURN_NONE;
}

/* state() -> dict of the local counters (for statistics and repr). */
static PyObject *
Endpoint_state(Endpoint *self, PyObject *Py_UNUSED(ignored))
{
    return Py_BuildValue(
        "{sKsKsKsKsKsKsKsKsKsKsKsK}", "out_head", (unsigned long long)self->out_head,
        "out_tail", (unsigned long long)self->out_tail_cache, "in_head",
        (unsigned long long)self->in_head_cache, "in_tail", (unsigned long long)self->in_tail,
        "arena_in_use", (unsigned long long)(self->a_head - self->a_freed), "live_leases",
        (unsigned long long)(self->fifo_next - self->fifo_first), "messages_sent",
        self->msgs_out, "bytes_sent", self->bytes_out, "messages_received", self->msgs_in,
        "bytes_received", self->bytes_in, "wakes_sent", self->wakes, "arena_freed",
        (unsigned long long)self->a_freed);
}

static PyObject *
Endpoint_get_reserved(Endpoint *self, void *Py_UNUSED(c))
{
    return PyBool_FromLong(self->reserved);
}

static PyMethodDef Endpoint_methods[] = {
    {"send", (PyCFunction)(void (*)(void))Endpoint_send, METH_FASTCALL,
     "Copy a payload into the arena and publish it; False if the ring or arena is full."},
    {"reserve", (PyCFunction)Endpoint_reserve, METH_O,
     "Allocate arena space to fill in place: its offset, or -1 if full."},
    {"commit", (PyCFunction)(void (*)(void))Endpoint_commit, METH_FASTCALL,
     "Publish the outstanding reservation, trimmed to a length."},
    {"recv", (PyCFunction)Endpoint_recv, METH_NOARGS,
     "Validate and take the next slot: a Message, or None if the ring is empty."},
    {"spin_recv", (PyCFunction)Endpoint_spin_recv, METH_O,
     "Spin (GIL released) up to budget_ns for a message, then recv()."},
    {"release", (PyCFunction)Endpoint_release, METH_O,
     "Release a lease; publishes the release position over the released prefix."},
    {"refresh", (PyCFunction)Endpoint_refresh, METH_NOARGS,
     "Reload and check the peer's head, tail and release position: (head, tail, freed, "
     "changed)."},
    {"refresh_moved", (PyCFunction)Endpoint_refresh_moved, METH_NOARGS,
     "As refresh(), with a bit mask: 1 the head moved, 2 the tail or release position."},
    {"state", (PyCFunction)Endpoint_state, METH_NOARGS, "Local counters as a dict."},
    {"prepare_sleep", (PyCFunction)(void (*)(void))Endpoint_prepare_sleep, METH_FASTCALL,
     "Announce sleep (store, full fence, re-check) in one call: a wake sequence, or -1/-2."},
    {"wake_peer", (PyCFunction)Endpoint_wake_peer, METH_NOARGS,
     "Wake the peer unconditionally (futex and doorbell)."},
    {"defer_wakes", (PyCFunction)Endpoint_defer_wakes, METH_O,
     "With True, publishing leaves waking a sleeping peer to flush_wakes()."},
    {"flush_wakes", (PyCFunction)Endpoint_flush_wakes, METH_NOARGS,
     "Wake the peer if it sleeps and messages were published since the last flush."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Endpoint_getset[] = {
    {"reserved", (getter)Endpoint_get_reserved, NULL, "A reservation is outstanding.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject EndpointType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "zeus._native.Endpoint",
    .tp_basicsize = sizeof(Endpoint),
    .tp_dealloc = (destructor)Endpoint_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Hot path of one channel end: ring and arena bookkeeping with validation.",
    .tp_methods = Endpoint_methods,
    .tp_getset = Endpoint_getset,
    .tp_init = (initproc)Endpoint_init,
    .tp_new = PyType_GenericNew,
};

static PyObject *
native_set_broken_error(PyObject *Py_UNUSED(m), PyObject *cls)
{
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, (PyTypeObject *)PyExc_Exception)) {
        PyErr_SetString(PyExc_TypeError, "expected an exception class");
        return NULL;
    }
    Py_INCREF(cls);
    Py_XSETREF(PeerBrokenError, cls);
    Py_RETURN_NONE;
}

static PyObject *
native_fence(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    atomic_thread_fence(memory_order_seq_cst);
    Py_RETURN_NONE;
}

/* set_pdeathsig(signal): the kernel sends `signal` to this process when its parent exits
   (prctl PR_SET_PDEATHSIG); a worker must not outlive its front. */
static PyObject *
native_set_pdeathsig(PyObject *Py_UNUSED(m), PyObject *arg)
{
    long sig = PyLong_AsLong(arg);
    if (sig == -1 && PyErr_Occurred())
        return NULL;
    if (prctl(PR_SET_PDEATHSIG, (unsigned long)sig, 0, 0, 0) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

/* ---- The message codec's hot path (zeus.core.codec is the specification) ----
   Pure byte layout, no policy: the same formats and the same checks as codec.py, which stays
   the executable specification; tests/unit/test_codec_native.py compares the two. */

typedef struct {
    char *buf;
    Py_ssize_t len, cap;
} OutBuf;

static int
out_put(OutBuf *o, const void *p, Py_ssize_t n)
{
    if (o->len + n > o->cap) {
        Py_ssize_t ncap = o->cap * 2 > o->len + n ? o->cap * 2 : o->len + n + 256;
        char *nb = PyMem_Realloc(o->buf, (size_t)ncap);
        if (!nb) {
            PyErr_NoMemory();
            return -1;
        }
        o->buf = nb;
        o->cap = ncap;
    }
    if (n)
        memcpy(o->buf + o->len, p, (size_t)n);
    o->len += n;
    return 0;
}

/* Append a length prefix of `width` bytes (1, 2 or 4, little-endian) and the bytes. */
static int
out_str(OutBuf *o, int width, const char *p, Py_ssize_t n)
{
    uint64_t limit = width == 1 ? 0xFFu : width == 2 ? 0xFFFFu : 0xFFFFFFFFu;
    if ((uint64_t)n > limit) {
        PyErr_Format(PyExc_OverflowError, "field of %zd bytes does not fit a u%d length", n,
                     width * 8);
        return -1;
    }
    unsigned char pre[4] = {(unsigned char)(n & 0xFF), (unsigned char)((n >> 8) & 0xFF),
                            (unsigned char)((n >> 16) & 0xFF), (unsigned char)((n >> 24) & 0xFF)};
    if (out_put(o, pre, width) < 0)
        return -1;
    return out_put(o, p, n);
}

static int
out_obj(OutBuf *o, int width, PyObject *obj)
{
    if (PyBytes_CheckExact(obj))
        return out_str(o, width, PyBytes_AS_STRING(obj), PyBytes_GET_SIZE(obj));
    Py_buffer b;
    if (PyObject_GetBuffer(obj, &b, PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    int rc = out_str(o, width, b.buf, b.len);
    PyBuffer_Release(&b);
    return rc;
}

static int
out_host(OutBuf *o, PyObject *host)
{
    if (host == Py_None)
        return out_str(o, 1, "", 0);
    if (PyUnicode_Check(host) && PyUnicode_IS_ASCII(host)) /* an address: no copy to encode */
        return out_str(o, 1, (const char *)PyUnicode_DATA(host), PyUnicode_GET_LENGTH(host));
    PyObject *enc = PyUnicode_AsLatin1String(host);
    if (!enc)
        return -1;
    int rc = out_str(o, 1, PyBytes_AS_STRING(enc), PyBytes_GET_SIZE(enc));
    Py_DECREF(enc);
    return rc;
}

/* Append n_headers x (str16 name, str32 value) from a sequence of 2-tuples. */
static int
out_headers(OutBuf *o, PyObject *seq)
{
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = items[i];
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "headers must be (name, value) pairs");
            return -1;
        }
        if (out_obj(o, 2, PyTuple_GET_ITEM(pair, 0)) < 0 ||
            out_obj(o, 4, PyTuple_GET_ITEM(pair, 1)) < 0)
            return -1;
    }
    return 0;
}

/* The head's fields (method, target, headers, http_version, https, client_host, client_port,
   server_host, server_port) -> bytes (codec.encode_request_head's layout). */
static PyObject *
encode_request_fields(PyObject *const *args)
{
    PyObject *seq = PySequence_Fast(args[2], "headers must be a sequence");
    if (!seq)
        return NULL;
    Py_ssize_t nh = PySequence_Fast_GET_SIZE(seq);
    int https = PyObject_IsTrue(args[4]);
    unsigned long cport = PyLong_AsUnsignedLong(args[6]);
    unsigned long sport = PyLong_AsUnsignedLong(args[8]);
    PyObject *res = NULL;
    OutBuf o = {PyMem_Malloc(512), 0, 512};
    if (!o.buf) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    if (https < 0 || PyErr_Occurred())
        goto out;
    if (nh > 0xFFFF || cport > 0xFFFF || sport > 0xFFFF) {
        PyErr_SetString(PyExc_OverflowError, "header count or port out of range");
        goto out;
    }
    unsigned char fixed[8] = {1, (unsigned char)(https ? 1 : 0),
                              (unsigned char)(nh & 0xFF), (unsigned char)(nh >> 8),
                              (unsigned char)(cport & 0xFF), (unsigned char)(cport >> 8),
                              (unsigned char)(sport & 0xFF), (unsigned char)(sport >> 8)};
    if (out_put(&o, fixed, 8) < 0 || out_obj(&o, 1, args[0]) < 0 || out_obj(&o, 2, args[1]) < 0 ||
        out_obj(&o, 1, args[3]) < 0 || out_host(&o, args[5]) < 0 || out_host(&o, args[7]) < 0 ||
        out_headers(&o, seq) < 0)
        goto out;
    res = PyBytes_FromStringAndSize(o.buf, o.len);
out:
    PyMem_Free(o.buf);
    Py_DECREF(seq);
    return res;
}

/* A (host, port) pair or None into out[0], out[1] (new references; None and 0 for None). */
static int
host_port(PyObject *pair, const char *what, PyObject **out)
{
    if (pair == Py_None) {
        out[0] = Py_NewRef(Py_None);
        out[1] = PyLong_FromLong(0);
        return out[1] ? 0 : -1;
    }
    if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
        PyErr_Format(PyExc_TypeError, "%s must be a (host, port) tuple or None", what);
        return -1;
    }
    out[0] = Py_NewRef(PyTuple_GET_ITEM(pair, 0));
    out[1] = Py_NewRef(PyTuple_GET_ITEM(pair, 1));
    return 0;
}

/* encode_request_head(head) -> bytes: a zeus.core.codec.RequestHead (or anything with its
   attributes) in codec.encode_request_head's layout, its fields read here, in one call. */
static PyObject *
native_encode_request_head(PyObject *Py_UNUSED(m), PyObject *head)
{
    PyObject *f[9] = {NULL}, *scheme = NULL, *client = NULL, *server = NULL, *res = NULL;
    for (int i = 0; i < 4; i++)
        if (!(f[i] = PyObject_GetAttr(head, head_names[i])))
            goto out;
    if (!(scheme = PyObject_GetAttr(head, head_names[4])) ||
        !(client = PyObject_GetAttr(head, head_names[5])) ||
        !(server = PyObject_GetAttr(head, head_names[6])))
        goto out;
    f[4] = Py_NewRef(PyUnicode_Check(scheme) &&
                     PyUnicode_CompareWithASCIIString(scheme, "https") == 0 ? Py_True : Py_False);
    if (host_port(client, "client", &f[5]) < 0 || host_port(server, "server", &f[7]) < 0)
        goto out;
    res = encode_request_fields(f);
out:
    for (int i = 0; i < 9; i++)
        Py_XDECREF(f[i]);
    Py_XDECREF(scheme);
    Py_XDECREF(client);
    Py_XDECREF(server);
    return res;
}

/* encode_response_head(status, headers) -> bytes (codec.encode_response_head's layout). */
static PyObject *
native_encode_response_head(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "encode_response_head(status, headers)");
        return NULL;
    }
    unsigned long status = PyLong_AsUnsignedLong(args[0]);
    if (PyErr_Occurred())
        return NULL;
    if (status > 0xFFFF) {
        PyErr_SetString(PyExc_OverflowError, "status out of range");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(args[1], "headers must be a sequence");
    if (!seq)
        return NULL;
    Py_ssize_t nh = PySequence_Fast_GET_SIZE(seq);
    PyObject *res = NULL;
    OutBuf o = {PyMem_Malloc(256), 0, 256};
    if (!o.buf) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    uint32_t n32 = (uint32_t)nh;
    unsigned char fixed[8] = {1, 0, (unsigned char)(status & 0xFF), (unsigned char)(status >> 8),
                              (unsigned char)(n32 & 0xFF), (unsigned char)((n32 >> 8) & 0xFF),
                              (unsigned char)((n32 >> 16) & 0xFF), (unsigned char)(n32 >> 24)};
    if (out_put(&o, fixed, 8) < 0 || out_headers(&o, seq) < 0)
        goto out;
    res = PyBytes_FromStringAndSize(o.buf, o.len);
out:
    PyMem_Free(o.buf);
    Py_DECREF(seq);
    return res;
}

typedef struct {
    const unsigned char *p;
    Py_ssize_t len, pos;
} InBuf;

static PyObject *
codec_broken(const char *fmt, ...)
{
    va_list va;
    va_start(va, fmt);
    PyObject *msg = PyUnicode_FromFormatV(fmt, va);
    va_end(va);
    if (msg) {
        PyErr_SetObject(PeerBrokenError ? PeerBrokenError : PyExc_RuntimeError, msg);
        Py_DECREF(msg);
    }
    return NULL;
}

/* Read a little-endian unsigned of `width` bytes: 0 ok, -1 "head truncated" raised. */
static int
in_uint(InBuf *b, int width, uint64_t *v)
{
    if (b->pos + width > b->len) {
        codec_broken("head truncated");
        return -1;
    }
    uint64_t x = 0;
    for (int i = width - 1; i >= 0; i--)
        x = (x << 8) | b->p[b->pos + i];
    b->pos += width;
    *v = x;
    return 0;
}

/* Read a strN: a new bytes object, or NULL with the error raised.  `lower` lower-cases it. */
static PyObject *
in_str(InBuf *b, int width, int lower)
{
    uint64_t n;
    if (in_uint(b, width, &n) < 0)
        return NULL;
    if ((uint64_t)(b->len - b->pos) < n)
        return codec_broken("head field runs past the message");
    PyObject *s = PyBytes_FromStringAndSize((const char *)b->p + b->pos, (Py_ssize_t)n);
    if (s && lower) {
        char *q = PyBytes_AS_STRING(s);
        for (uint64_t i = 0; i < n; i++)
            if (q[i] >= 'A' && q[i] <= 'Z')
                q[i] = (char)(q[i] + 32);
    }
    b->pos += (Py_ssize_t)n;
    return s;
}

static int
is_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return 1;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* decode_response_head(buf) -> (status, headers): parse and validate a response head from a
   worker, which may be hostile (the checks of codec.decode_response_head, same messages). */
static PyObject *
native_decode_response_head(PyObject *Py_UNUSED(m), PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    InBuf b = {view.buf, view.len, 0};
    PyObject *headers = NULL, *res = NULL;
    uint64_t version, reserved, status, nh;
    if (in_uint(&b, 1, &version) < 0 || in_uint(&b, 1, &reserved) < 0 ||
        in_uint(&b, 2, &status) < 0 || in_uint(&b, 4, &nh) < 0)
        goto out;
    if (version != 1) {
        codec_broken("response head version %d", (int)version);
        goto out;
    }
    if (status < 100 || status > 999) {
        codec_broken("response status %d", (int)status);
        goto out;
    }
    if (nh > (uint64_t)(view.len / 6)) {
        codec_broken("response claims %llu headers in %zd bytes", (unsigned long long)nh,
                     view.len);
        goto out;
    }
    headers = PyList_New((Py_ssize_t)nh);
    if (!headers)
        goto out;
    for (uint64_t i = 0; i < nh; i++) {
        PyObject *name = in_str(&b, 2, 0);
        if (!name)
            goto out;
        PyObject *value = in_str(&b, 4, 0);
        if (!value) {
            Py_DECREF(name);
            goto out;
        }
        const unsigned char *np = (const unsigned char *)PyBytes_AS_STRING(name);
        Py_ssize_t nl = PyBytes_GET_SIZE(name);
        int ok = nl > 0;
        for (Py_ssize_t k = 0; ok && k < nl; k++)
            ok = is_tchar(np[k]);
        if (!ok) {
            PyObject *cut = PyBytes_FromStringAndSize((const char *)np, nl < 40 ? nl : 40);
            if (cut) {
                codec_broken("invalid response header name %R", cut);
                Py_DECREF(cut);
            }
            Py_DECREF(name);
            Py_DECREF(value);
            goto out;
        }
        char *q = PyBytes_AS_STRING(name);
        for (Py_ssize_t k = 0; k < nl; k++)
            if (q[k] >= 'A' && q[k] <= 'Z')
                q[k] = (char)(q[k] + 32);
        const char *vp = PyBytes_AS_STRING(value);
        Py_ssize_t vl = PyBytes_GET_SIZE(value);
        if (memchr(vp, '\r', (size_t)vl) || memchr(vp, '\n', (size_t)vl) ||
            memchr(vp, '\0', (size_t)vl)) {
            PyObject *cut = PyBytes_FromStringAndSize(q, nl < 40 ? nl : 40);
            if (cut) {
                codec_broken("invalid response header value for %R", cut);
                Py_DECREF(cut);
            }
            Py_DECREF(name);
            Py_DECREF(value);
            goto out;
        }
        PyObject *pair = PyTuple_New(2);
        if (!pair) {
            Py_DECREF(name);
            Py_DECREF(value);
            goto out;
        }
        PyTuple_SET_ITEM(pair, 0, name);
        PyTuple_SET_ITEM(pair, 1, value);
        PyList_SET_ITEM(headers, (Py_ssize_t)i, pair);
    }
    if (b.pos != b.len) {
        codec_broken("response head has trailing bytes");
        goto out;
    }
    {
        /* A tuple built directly: Py_BuildValue parses its format string at every call. */
        PyObject *st = PyLong_FromUnsignedLong((unsigned long)status);
        if (st) {
            res = PyTuple_Pack(2, st, headers);
            Py_DECREF(st);
        }
    }
out:
    Py_XDECREF(headers);
    PyBuffer_Release(&view);
    return res;
}

/* decode_request_head(buf) -> (method, target, headers, http_version, https, client_host,
   client_port, server_host, server_port): codec.decode_request_head's parsing (the worker
   side; hosts are str, empty when absent). */
static PyObject *
native_decode_request_head(PyObject *Py_UNUSED(m), PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    InBuf b = {view.buf, view.len, 0};
    PyObject *method = NULL, *target = NULL, *hv = NULL, *ch = NULL, *sh = NULL, *chs = NULL,
             *shs = NULL, *headers = NULL, *res = NULL;
    uint64_t version, scheme, nh, cport, sport;
    if (in_uint(&b, 1, &version) < 0 || in_uint(&b, 1, &scheme) < 0 ||
        in_uint(&b, 2, &nh) < 0 || in_uint(&b, 2, &cport) < 0 || in_uint(&b, 2, &sport) < 0)
        goto out;
    if (version != 1) {
        codec_broken("request head version %d", (int)version);
        goto out;
    }
    if (!(method = in_str(&b, 1, 0)) || !(target = in_str(&b, 2, 0)) ||
        !(hv = in_str(&b, 1, 0)) || !(ch = in_str(&b, 1, 0)) || !(sh = in_str(&b, 1, 0)))
        goto out;
    if (!(chs = PyUnicode_DecodeLatin1(PyBytes_AS_STRING(ch), PyBytes_GET_SIZE(ch), NULL)) ||
        !(shs = PyUnicode_DecodeLatin1(PyBytes_AS_STRING(sh), PyBytes_GET_SIZE(sh), NULL)))
        goto out;
    headers = PyList_New(0);
    if (!headers)
        goto out;
    for (uint64_t i = 0; i < nh; i++) {
        PyObject *name = in_str(&b, 2, 0);
        if (!name)
            goto out;
        PyObject *value = in_str(&b, 4, 0);
        if (!value) {
            Py_DECREF(name);
            goto out;
        }
        PyObject *pair = PyTuple_Pack(2, name, value);
        Py_DECREF(name);
        Py_DECREF(value);
        if (!pair || PyList_Append(headers, pair) < 0) {
            Py_XDECREF(pair);
            goto out;
        }
        Py_DECREF(pair);
    }
    {
        /* A tuple built directly, as in decode_response_head. */
        PyObject *cp = PyLong_FromUnsignedLong((unsigned long)cport);
        PyObject *sp = cp ? PyLong_FromUnsignedLong((unsigned long)sport) : NULL;
        if (sp)
            res = PyTuple_Pack(9, method, target, headers, hv, scheme ? Py_True : Py_False,
                               chs, cp, shs, sp);
        Py_XDECREF(cp);
        Py_XDECREF(sp);
    }
out:
    Py_XDECREF(method);
    Py_XDECREF(target);
    Py_XDECREF(hv);
    Py_XDECREF(ch);
    Py_XDECREF(sh);
    Py_XDECREF(chs);
    Py_XDECREF(shs);
    Py_XDECREF(headers);
    PyBuffer_Release(&view);
    return res;
}

/* ---- The worker's response fast path (zeus.worker, zeus.adapters.wsgi) ----
   Mechanism only: header normalisation with the checks the front applies to what a worker
   sends (so a bad header is the handler's ValueError, a 500, never a protocol violation), and
   a whole small response -- head and body -- written into the arena and published with ONE
   release store of the ring head and ONE look at the peer's sleep word.  Which responses take
   this path (status, HEAD, Content-Length, size) is decided in Python (Worker._write_response);
   the head's layout is encode_response_head's (zeus.core.codec). */

/* A header name or value as bytes: str (latin-1), bytes as is, another buffer copied;
   str_only: anything but str is a TypeError (PEP 3333 headers are str). */
static PyObject *
header_bytes(PyObject *obj, int str_only)
{
    if (PyUnicode_Check(obj))
        return PyUnicode_AsLatin1String(obj);
    if (str_only) {
        PyErr_Format(PyExc_TypeError, "header %R: name and value must be str", obj);
        return NULL;
    }
    if (PyBytes_CheckExact(obj)) {
        Py_INCREF(obj);
        return obj;
    }
    return PyBytes_FromObject(obj);
}

/* The first 40 bytes of a header name, for an error message. */
static void
header_error(PyObject *exc, const char *what, PyObject *name)
{
    Py_ssize_t n = PyBytes_GET_SIZE(name);
    PyObject *cut = PyBytes_FromStringAndSize(PyBytes_AS_STRING(name), n < 40 ? n : 40);
    if (cut) {
        PyErr_Format(exc, what, cut);
        Py_DECREF(cut);
    }
}

/* response_headers(headers, str_only) -> list of (lower-case name, value) bytes pairs.
   ValueError for a name that is not an RFC 9110 token or a value with CR, LF or NUL. */
static PyObject *
native_response_headers(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 1 && nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "response_headers(headers, str_only=False)");
        return NULL;
    }
    int str_only = nargs == 2 ? PyObject_IsTrue(args[1]) : 0;
    if (str_only < 0)
        return NULL;
    PyObject *it = PyObject_GetIter(args[0]);
    if (!it)
        return NULL;
    PyObject *out = PyList_New(0), *item;
    if (!out) {
        Py_DECREF(it);
        return NULL;
    }
    while ((item = PyIter_Next(it)) != NULL) {
        PyObject *name = NULL, *value = NULL, *pair = NULL;
        PyObject *seq = PySequence_Fast(item, "a header must be a (name, value) pair");
        Py_DECREF(item);
        if (!seq)
            goto fail;
        if (PySequence_Fast_GET_SIZE(seq) != 2) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_ValueError, "a header must be a (name, value) pair");
            goto fail;
        }
        name = header_bytes(PySequence_Fast_GET_ITEM(seq, 0), str_only);
        if (name)
            value = header_bytes(PySequence_Fast_GET_ITEM(seq, 1), str_only);
        Py_DECREF(seq);
        if (!value)
            goto fail_pair;
        const unsigned char *np = (const unsigned char *)PyBytes_AS_STRING(name);
        Py_ssize_t nl = PyBytes_GET_SIZE(name);
        int ok = nl > 0, upper = 0;
        for (Py_ssize_t k = 0; ok && k < nl; k++) {
            ok = is_tchar(np[k]);
            upper |= np[k] >= 'A' && np[k] <= 'Z';
        }
        if (!ok) {
            header_error(PyExc_ValueError, "invalid header name %R", name);
            goto fail_pair;
        }
        const char *vp = PyBytes_AS_STRING(value);
        size_t vl = (size_t)PyBytes_GET_SIZE(value);
        if (memchr(vp, '\r', vl) || memchr(vp, '\n', vl) || memchr(vp, '\0', vl)) {
            header_error(PyExc_ValueError, "invalid value for header %R", name);
            goto fail_pair;
        }
        if (upper) {
            PyObject *low = PyBytes_FromStringAndSize(NULL, nl);
            if (!low)
                goto fail_pair;
            char *q = PyBytes_AS_STRING(low);
            for (Py_ssize_t k = 0; k < nl; k++)
                q[k] = (char)(np[k] >= 'A' && np[k] <= 'Z' ? np[k] + 32 : np[k]);
            Py_SETREF(name, low);
        }
        pair = PyTuple_Pack(2, name, value);
        if (!pair || PyList_Append(out, pair) < 0)
            goto fail_pair;
        Py_DECREF(pair);
        Py_DECREF(name);
        Py_DECREF(value);
        continue;
    fail_pair:
        Py_XDECREF(pair);
        Py_XDECREF(name);
        Py_XDECREF(value);
        goto fail;
    }
    Py_DECREF(it);
    if (PyErr_Occurred()) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
fail:
    Py_DECREF(it);
    Py_DECREF(out);
    return NULL;
}

static inline void
put_u16(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v & 0xFF);
    p[1] = (unsigned char)((v >> 8) & 0xFF);
}

static inline void
put_u32(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)((v >> (8 * i)) & 0xFF);
}

/* send_response(endpoint, id, head_kind, body_kind, end_flag, status, headers, body,
   add_length) -> bool.  headers: a list of (bytes, bytes) pairs (response_headers' output).
   add_length: append content-length: len(body) unless a header is named b"content-length".
   Publishes the head (flags end_flag if the body is empty) and then the body (end_flag), or
   nothing and returns False when the ring or the arena lacks room for both. */
static PyObject *
native_send_response(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "send_response(endpoint, id, head_kind, body_kind, "
                                         "end_flag, status, headers, body, add_length)");
        return NULL;
    }
    if (!PyObject_TypeCheck(args[0], &EndpointType)) {
        PyErr_SetString(PyExc_TypeError, "send_response needs an Endpoint");
        return NULL;
    }
    Endpoint *e = (Endpoint *)args[0];
    unsigned long long id;
    unsigned int hkind, bkind;
    if (parse_hdr(args + 1, &id, &hkind, &bkind) < 0)
        return NULL;
    unsigned long end = PyLong_AsUnsignedLong(args[4]);
    unsigned long status = PyLong_AsUnsignedLong(args[5]);
    int add_length = PyObject_IsTrue(args[8]);
    if (PyErr_Occurred() || add_length < 0 || !usable(e))
        return NULL;
    if (status > 0xFFFF || end > 0xFFFF) {
        PyErr_SetString(PyExc_OverflowError, "status and flags are 16-bit");
        return NULL;
    }
    if (e->reserved) {
        PyErr_SetString(PyExc_RuntimeError, "a reservation is outstanding");
        return NULL;
    }
    if (!PyList_CheckExact(args[6])) {
        PyErr_SetString(PyExc_TypeError, "headers must be a list");
        return NULL;
    }
    PyObject *headers = args[6];
    Py_buffer b;
    if (PyObject_GetBuffer(args[7], &b, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    PyObject *res = NULL;
    char length[24];
    int length_len = 0;
    /* The head's size, and whether content-length is already there. */
    Py_ssize_t nh = PyList_GET_SIZE(headers);
    uint64_t size = 8;
    for (Py_ssize_t i = 0; i < nh; i++) {
        PyObject *pair = PyList_GET_ITEM(headers, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 ||
            !PyBytes_Check(PyTuple_GET_ITEM(pair, 0)) || !PyBytes_Check(PyTuple_GET_ITEM(pair, 1))) {
            PyErr_SetString(PyExc_TypeError, "headers must be (bytes, bytes) pairs");
            goto out;
        }
        PyObject *name = PyTuple_GET_ITEM(pair, 0);
        Py_ssize_t nl = PyBytes_GET_SIZE(name), vl = PyBytes_GET_SIZE(PyTuple_GET_ITEM(pair, 1));
        if (nl > 0xFFFF || (uint64_t)vl > 0xFFFFFFFFu) {
            PyErr_SetString(PyExc_OverflowError, "header field too long");
            goto out;
        }
        if (add_length && nl == 14 && memcmp(PyBytes_AS_STRING(name), "content-length", 14) == 0)
            add_length = 0;
        size += 6 + (uint64_t)nl + (uint64_t)vl;
    }
    if (add_length) {
        length_len = snprintf(length, sizeof length, "%zd", b.len);
        size += 6 + 14 + (uint64_t)length_len;
    }
    if (size > e->out_size / 2 || (uint64_t)b.len > e->out_size / 2) {
        res = Py_False; /* a message this large is the chunking path's (Channel.send) */
        goto out;
    }
    unsigned int hflags = b.len ? 0 : (unsigned int)end;
    if (check_outgoing(e, hkind, hflags, size) < 0 ||
        check_outgoing(e, bkind, (unsigned int)end, (unsigned long long)b.len) < 0)
        goto out;
    /* Room for both slots, then both allocations; undo the first if the second fails. */
    uint64_t need = b.len ? 2 : 1;
    if (e->out_head + need - e->out_tail_cache > e->slots) {
        int room = ring_room(e);
        if (room < 0)
            goto out;
        if (e->out_head + need - e->out_tail_cache > e->slots) {
            res = Py_False;
            goto out;
        }
    }
    uint64_t save_head = e->a_head, save_prev = e->a_prev, save_last = e->a_last;
    int64_t hoff = arena_alloc(e, size);
    if (hoff == -2)
        goto out;
    int64_t boff = 0;
    if (hoff >= 0 && b.len) {
        boff = arena_alloc(e, (uint64_t)b.len);
        if (boff == -2) {
            e->a_head = save_head, e->a_prev = save_prev, e->a_last = save_last;
            goto out;
        }
    }
    if (hoff == -1 || boff == -1) {
        e->a_head = save_head, e->a_prev = save_prev, e->a_last = save_last;
        res = Py_False;
        goto out;
    }
    unsigned char *p = (unsigned char *)e->map->base + e->out_arena + hoff;
    uint32_t count = (uint32_t)nh + (add_length ? 1 : 0);
    p[0] = 1;
    p[1] = 0;
    put_u16(p + 2, (uint32_t)status);
    put_u32(p + 4, count);
    p += 8;
    for (Py_ssize_t i = 0; i < nh; i++) {
        PyObject *pair = PyList_GET_ITEM(headers, i);
        PyObject *name = PyTuple_GET_ITEM(pair, 0), *value = PyTuple_GET_ITEM(pair, 1);
        Py_ssize_t nl = PyBytes_GET_SIZE(name), vl = PyBytes_GET_SIZE(value);
        put_u16(p, (uint32_t)nl);
        memcpy(p + 2, PyBytes_AS_STRING(name), (size_t)nl);
        p += 2 + nl;
        put_u32(p, (uint64_t)vl);
        memcpy(p + 4, PyBytes_AS_STRING(value), (size_t)vl);
        p += 4 + vl;
    }
    if (add_length) {
        put_u16(p, 14);
        memcpy(p + 2, "content-length", 14);
        p += 16;
        put_u32(p, (uint64_t)length_len);
        memcpy(p + 4, length, (size_t)length_len);
    }
    put_slot(e, id, (uint16_t)hkind, (uint16_t)hflags, (uint32_t)size, (uint64_t)hoff);
    if (b.len) {
        memcpy(e->map->base + e->out_arena + boff, b.buf, (size_t)b.len);
        put_slot(e, id, (uint16_t)bkind, (uint16_t)end, (uint32_t)b.len, (uint64_t)boff);
    }
    /* release: both slots and their arena bytes are visible before the head covers them */
    publish_out(e);
    res = Py_True;
out:
    PyBuffer_Release(&b);
    Py_XINCREF(res);
    return res;
}

/* ---- end of the worker's response fast path ---- */

static PyMethodDef module_methods[] = {
    {"encode_request_head", native_encode_request_head, METH_O,
     "Serialise a request head (zeus.core.codec layout) from a RequestHead."},
    {"encode_response_head", (PyCFunction)(void (*)(void))native_encode_response_head,
     METH_FASTCALL, "Serialise a response head (zeus.core.codec layout)."},
    {"decode_response_head", native_decode_response_head, METH_O,
     "Parse and validate a response head: (status, headers)."},
    {"decode_request_head", native_decode_request_head, METH_O,
     "Parse a request head into a tuple of its fields."},
    {"set_pdeathsig", native_set_pdeathsig, METH_O,
     "Have the kernel send a signal to this process when its parent exits."},
    {"fence", native_fence, METH_NOARGS, "Full (sequentially consistent) memory fence."},
    {"set_broken_error", native_set_broken_error, METH_O,
     "Set the exception class raised when the peer breaks the protocol."},
    {"response_headers", (PyCFunction)(void (*)(void))native_response_headers, METH_FASTCALL,
     "Normalise and check response headers: a list of (lower-case name, value) bytes pairs."},
    {"send_response", (PyCFunction)(void (*)(void))native_send_response, METH_FASTCALL,
     "Write a response head and body into the arena and publish both at once."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "zeus._native",
    .m_doc = "Atomics, fences, futexes and the channel hot path for Zeus (mechanism only).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    for (int i = 0; i < 7; i++)
        if (!head_names[i] && !(head_names[i] = PyUnicode_InternFromString(head_name_strs[i])))
            return NULL;
    if (!str_release && !(str_release = PyUnicode_InternFromString("release")))
        return NULL;
    if (PyType_Ready(&MappingType) < 0 || PyType_Ready(&EndpointType) < 0 ||
        PyType_Ready(&MessageType) < 0)
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
    Py_INCREF(&MessageType);
    if (PyModule_AddObject(m, "Message", (PyObject *)&MessageType) < 0) {
        Py_DECREF(&MessageType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&EndpointType);
    if (PyModule_AddObject(m, "Endpoint", (PyObject *)&EndpointType) < 0) {
        Py_DECREF(&EndpointType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
