/*
 * pybootd._pump: answer expected datagrams with prepared ones, compiled.
 *
 * Why (figures in pybootd/server/tftp_pump.py): with many clients the CPU
 * per datagram sets the aggregate, CPython's per packet being the limit, so
 * the step that needs no decision runs here, knowing no protocol. A socket is
 * armed with count steps in three buffers (expected datagrams, reply headers,
 * a body cut by a stride): a Python object per step would cost the caller
 * about 0.4 us, a tenth of the pump's per datagram. Replies are sent from
 * those buffers, not copied; anything unexpected disarms and is handed back.
 * Sockets are connected to their peer: the kernel gives them only the peer's
 * datagrams, and a send reuses the socket's route (no lookup per datagram).
 *
 * Busy polling, the one policy here: polling for up to busy_poll seconds
 * after a wake-up's work spares a wake-up per round trip with fast peers;
 * after SPIN_MISSES empty polls in a row, only once every SPIN_PROBE calls.
 * Epoll is level-triggered: what run() leaves unread keeps the pump readable.
 * One thread; run() releases the GIL for its system calls and polls (file and
 * HTTP reader threads go on) and touches no Python object meanwhile.
 */
#define PY_SSIZE_T_CLEAN
#ifndef Py_LIMITED_API
#define Py_LIMITED_API 0x030B0000
#endif
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#if Py_LIMITED_API < 0x030B0000
#error "the buffer protocol is in the limited API from Python 3.11 on"
#endif

#define RECV_MAX 65536        /* more than any UDP payload: nothing is cut */
#define EVENTS 64             /* epoll events per epoll_wait */
#define HANDBACK_MAX 64       /* datagrams handed back per run() */
#define READS_PER_EVENT 8     /* datagrams read from one socket per epoll round */
#define SPIN_MISSES 4         /* empty polls in a row before the pump stops polling */
#define SPIN_PROBE 1024       /* wake-ups after which it polls once again */
/* Room for HANDBACK_MAX - 1 datagrams kept and one more read: allocated once
 * at its most, as the pages never touched are never resident. */
#define ARENA ((size_t)HANDBACK_MAX * RECV_MAX)

typedef struct {
    int fd;                   /* connected to its peer: only its datagrams come */
    int armed, held;          /* may answer the peer's next datagram; holds heads, body */
    Py_ssize_t nsteps, next;  /* step `next` is the one the next datagram must match */
    char *expects;            /* nsteps expected datagrams of expect_len, copied */
    Py_ssize_t expect_len, head_len, stride;
    Py_buffer heads, body;
    Py_ssize_t done;          /* steps answered since arm() */
    double last_send;         /* CLOCK_MONOTONIC, as time.monotonic() */
} Slot;

typedef struct {
    int fd;
    Py_ssize_t off, len;      /* in Pump.arena */
} Handback;

typedef struct {
    PyObject_HEAD
    int epfd;                 /* -1 once closed */
    int running;              /* run() is in progress (without the GIL) */
    Slot **slots;             /* indexed by file descriptor */
    int nslots, count, misses, waits;  /* misses, waits: the busy-poll adaptation */
    char *arena;              /* ARENA bytes: received datagrams, handed-back ones in order */
    Handback backs[HANDBACK_MAX];
} Pump;

static double monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static Slot *find(Pump *self, int fd) {
    return fd >= 0 && fd < self->nslots ? self->slots[fd] : NULL;
}

static int fail(PyObject *type, const char *message) {
    PyErr_SetString(type, message);
    return -1;
}

/* --- the arm of a slot, with the GIL ------------------------------------------ */

/* Release what the arm holds and disarm (the count stays, for take()). */
static void drop_arm(Slot *slot) {
    if (slot->held) {
        PyBuffer_Release(&slot->heads);
        PyBuffer_Release(&slot->body);
    }
    PyMem_Free(slot->expects);
    slot->expects = NULL;
    slot->held = slot->armed = 0;
    slot->nsteps = slot->next = 0;
}

/* Arm the (disarmed, empty) slot with n steps; -1 with an exception set,
 * the slot left disarmed. */
static int load_arm(Slot *slot, Py_ssize_t n, PyObject *expects, PyObject *heads,
                    PyObject *body, Py_ssize_t stride) {
    if (n < 0 || stride < 0) return fail(PyExc_ValueError, "count and stride must be >= 0");
    Py_buffer ex;
    if (PyObject_GetBuffer(expects, &ex, PyBUF_SIMPLE) < 0) return -1;
    if (PyObject_GetBuffer(heads, &slot->heads, PyBUF_SIMPLE) < 0) goto failed;
    if (PyObject_GetBuffer(body, &slot->body, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&slot->heads);
        goto failed;
    }
    slot->held = 1;
    Py_ssize_t body_len = slot->body.len;
    /* (n - 1) * stride <= body_len <= n * stride, in divisions: no overflow */
    int fits = n == 0 || stride == 0 ? body_len == 0
             : n - 1 <= body_len / stride && body_len / stride + (body_len % stride != 0) <= n;
    if (n > 0 ? ex.len % n != 0 : ex.len != 0)
        fail(PyExc_ValueError, "expects is not count datagrams of one size");
    else if (n > 0 ? slot->heads.len % n != 0 : slot->heads.len != 0)
        fail(PyExc_ValueError, "heads is not count headers of one size");
    else if (!fits)  /* a body that does not end in the last step is a mistake */
        fail(PyExc_ValueError, "body does not end in the last step's stride");
    else if ((slot->expects = PyMem_Malloc(ex.len > 0 ? (size_t)ex.len : 1)) == NULL)
        PyErr_NoMemory();
    else {
        memcpy(slot->expects, ex.buf, (size_t)ex.len);
        slot->expect_len = n > 0 ? ex.len / n : 0;
        slot->head_len = n > 0 ? slot->heads.len / n : 0;
        slot->stride = stride;
        slot->nsteps = n;
    }
failed:
    PyBuffer_Release(&ex);
    if (slot->expects != NULL) return 0;
    drop_arm(slot);
    return -1;
}

/* --- the batch, without the GIL ------------------------------------------------ */

/* Send the reply of the slot's next step if the datagram is what it
 * expects: 1 if sent, 0 if the datagram is Python's. */
static int answer(Slot *slot, const char *data, Py_ssize_t len) {
    if (!slot->armed || slot->next >= slot->nsteps) return 0;
    Py_ssize_t i = slot->next, start = i * slot->stride;
    if (len != slot->expect_len
        || memcmp(data, slot->expects + i * slot->expect_len, (size_t)len) != 0)
        return 0;
    Py_ssize_t rest = slot->body.len - start;  /* >= 0: load_arm checked it */
    struct iovec iov[2] = {
        {(char *)slot->heads.buf + i * slot->head_len, (size_t)slot->head_len},
        {(char *)slot->body.buf + start, (size_t)(rest < slot->stride ? rest : slot->stride)},
    };
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = 2};  /* connected: no address */
    ssize_t sent;
    do {
        sent = sendmsg(slot->fd, &msg, MSG_DONTWAIT);
    } while (sent < 0 && errno == EINTR);
    if (sent < 0) return 0;  /* Python answers it, and sees the error itself */
    slot->next++;
    slot->done++;
    slot->last_send = monotonic();
    return 1;
}

/* After a poll that saw nothing: poll again (1), or let the loop sleep (0)?
 * `idle_since` is when this run of empty polls began, 0.0 before the first. */
static int spin_more(Pump *self, double *idle_since, double spin) {
    if (*idle_since == 0.0 && self->misses >= SPIN_MISSES) {
        if (++self->waits < SPIN_PROBE) return 0;
        self->waits = 0;
        self->misses = SPIN_MISSES - 1;  /* one more try: a miss stops it again */
    }
    double now = monotonic();
    if (*idle_since == 0.0) *idle_since = now;
    else if (now - *idle_since >= spin) {
        self->misses++;
        return 0;
    }
    return 1;
}

/* Read what is ready, answer what matches, keep the rest in self->backs. */
static int batch(Pump *self, int budget, double spin) {
    struct epoll_event events[EVENTS];
    int handled = 0, nbacks = 0;
    Py_ssize_t used = 0;
    double idle_since = 0.0;
    while (handled < budget && nbacks < HANDBACK_MAX) {
        int n = epoll_wait(self->epfd, events, EVENTS, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) break;
        if (n == 0) {
            /* Python has work waiting: give it back now rather than poll. */
            if (spin <= 0.0 || nbacks > 0 || !spin_more(self, &idle_since, spin)) break;
            continue;
        }
        if (idle_since != 0.0) self->misses = 0;  /* this poll saw something */
        idle_since = 0.0;
        for (int i = 0; i < n && handled < budget && nbacks < HANDBACK_MAX; i++) {
            int fd = events[i].data.fd;
            Slot *slot = find(self, fd);
            if (slot == NULL) continue;
            for (int k = 0; k < READS_PER_EVENT && handled < budget && nbacks < HANDBACK_MAX;
                 k++) {
                Handback *back = &self->backs[nbacks];
                *back = (Handback){.fd = fd, .off = used};
                ssize_t len = recv(fd, self->arena + used, RECV_MAX, MSG_DONTWAIT);
                if (len < 0) {
                    if (errno == EAGAIN || errno == EWOULDBLOCK) break;
                    continue;  /* EINTR, or an ICMP error (ECONNREFUSED): read on */
                }
                handled++;
                /* Answered: the peer's next datagram is not there yet, so go on
                 * to the next socket rather than ask. */
                if (answer(slot, self->arena + used, len)) break;
                /* Python's, and so is all that follows on this socket, in order. */
                slot->armed = 0;
                back->len = len;
                used += len;
                nbacks++;
            }
        }
    }
    return nbacks;
}

/* --- the methods and their helpers, with the GIL ---------------------------------- */

/* 1 if the pump may be used now, else 0 with an exception set. */
static int usable(Pump *self) {
    if (self->running) fail(PyExc_RuntimeError, "the pump is in run() on another thread");
    else if (self->epfd < 0) fail(PyExc_ValueError, "the pump is closed");
    return !self->running && self->epfd >= 0;
}

/* The file descriptor, or -1 with an exception set. */
static int fd_arg(PyObject *arg) {
    long fd = PyLong_AsLong(arg);
    if ((fd < 0 || fd > INT_MAX) && !PyErr_Occurred())
        PyErr_Format(PyExc_ValueError, "bad file descriptor %ld", fd);
    return fd < 0 || fd > INT_MAX ? -1 : (int)fd;
}

static Slot *lookup(Pump *self, PyObject *arg) {
    int fd = usable(self) ? fd_arg(arg) : -1;
    if (fd < 0) return NULL;
    Slot *slot = find(self, fd);
    if (slot == NULL) PyErr_Format(PyExc_KeyError, "fd %d is not in the pump", fd);
    return slot;
}

static void free_slot(Pump *self, int fd) {
    epoll_ctl(self->epfd, EPOLL_CTL_DEL, fd, NULL);  /* fails if closed already: gone */
    drop_arm(self->slots[fd]);
    PyMem_Free(self->slots[fd]);
    self->slots[fd] = NULL;
    self->count--;
}

static void pump_close(Pump *self) {
    for (int fd = 0; fd < self->nslots; fd++)
        if (self->slots[fd] != NULL) free_slot(self, fd);
    if (self->epfd >= 0) close(self->epfd);
    self->epfd = -1;
}

static PyObject *Pump_fileno(Pump *self, PyObject *Py_UNUSED(ignored)) {
    return usable(self) ? PyLong_FromLong(self->epfd) : NULL;
}

static PyObject *Pump_add(Pump *self, PyObject *arg) {
    int fd = usable(self) ? fd_arg(arg) : -1;
    if (fd < 0) return NULL;
    if (find(self, fd) != NULL)
        return PyErr_Format(PyExc_ValueError, "fd %d is in the pump already", fd);
    if (fd >= self->nslots) {
        int size = self->nslots ? self->nslots : 64;
        while (size <= fd) size *= 2;
        Slot **grown = PyMem_Realloc(self->slots, sizeof(Slot *) * (size_t)size);
        if (grown == NULL) return PyErr_NoMemory();
        memset(grown + self->nslots, 0, sizeof(Slot *) * (size_t)(size - self->nslots));
        self->slots = grown;
        self->nslots = size;
    }
    Slot *slot = PyMem_Calloc(1, sizeof(Slot));
    if (slot == NULL) return PyErr_NoMemory();
    slot->fd = fd;
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};  /* level-triggered */
    if (epoll_ctl(self->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        PyMem_Free(slot);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    self->slots[fd] = slot;
    self->count++;
    Py_RETURN_NONE;
}

static PyObject *Pump_remove(Pump *self, PyObject *arg) {
    int fd = usable(self) ? fd_arg(arg) : -1;
    if (fd < 0) return NULL;
    if (find(self, fd) != NULL) free_slot(self, fd);
    Py_RETURN_NONE;
}

static PyObject *Pump_arm(Pump *self, PyObject *args) {
    PyObject *fd, *expects, *heads, *body;
    Py_ssize_t count, stride;
    if (!PyArg_ParseTuple(args, "OnOOOn:arm", &fd, &count, &expects, &heads, &body, &stride))
        return NULL;
    Slot *slot = lookup(self, fd);
    if (slot == NULL) return NULL;
    if (slot->done > 0)  /* arming again would lose what the peer got from the count */
        return PyErr_Format(PyExc_ValueError, "fd %d: take() the %zd steps answered first",
                            slot->fd, slot->done);
    drop_arm(slot);
    if (load_arm(slot, count, expects, heads, body, stride) < 0) return NULL;
    slot->armed = 1;
    Py_RETURN_NONE;
}

static PyObject *Pump_take(Pump *self, PyObject *arg) {
    Slot *slot = lookup(self, arg);
    if (slot == NULL) return NULL;
    PyObject *taken = Py_BuildValue("(nd)", slot->done, slot->done > 0 ? slot->last_send : 0.0);
    drop_arm(slot);
    slot->done = 0;
    slot->last_send = 0.0;
    return taken;
}

static PyObject *Pump_run(Pump *self, PyObject *args) {
    long budget;
    double spin;
    if (!PyArg_ParseTuple(args, "ld:run", &budget, &spin) || !usable(self)) return NULL;
    if (budget < 0 || spin < 0.0 || spin != spin)
        return PyErr_Format(PyExc_ValueError, "budget and busy_poll_seconds must be >= 0");
    int nbacks;
    self->running = 1;
    Py_BEGIN_ALLOW_THREADS
    nbacks = batch(self, budget > INT_MAX ? INT_MAX : (int)budget, spin);
    Py_END_ALLOW_THREADS
    self->running = 0;
    PyObject *out = PyList_New(nbacks);
    for (int i = 0; i < nbacks; i++) {
        Handback *back = &self->backs[i];
        Slot *slot = find(self, back->fd);
        if (slot != NULL && !slot->armed && slot->held)
            drop_arm(slot);  /* disarmed in the batch: its buffers are not needed now */
        if (out == NULL) continue;
        PyObject *item = Py_BuildValue("(iy#)", back->fd, self->arena + back->off, back->len);
        if (item == NULL || PyList_SetItem(out, i, item) < 0) Py_CLEAR(out);
    }
    return out;
}

static PyObject *Pump_close(Pump *self, PyObject *Py_UNUSED(ignored)) {
    if (self->epfd >= 0 && !usable(self)) return NULL;  /* closed: never running */
    pump_close(self);
    Py_RETURN_NONE;
}

static PyObject *Pump_active(Pump *self, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromLong(self->count);
}

static PyObject *Pump_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *no_keywords[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, ":Pump", no_keywords)) return NULL;
    Pump *self = (Pump *)((allocfunc)PyType_GetSlot(type, Py_tp_alloc))(type, 0);
    if (self == NULL) return NULL;
    self->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (self->epfd < 0) PyErr_SetFromErrno(PyExc_OSError);
    else if ((self->arena = PyMem_Malloc(ARENA)) == NULL) PyErr_NoMemory();
    if (self->arena != NULL) return (PyObject *)self;
    Py_DECREF(self);  /* its dealloc closes epfd */
    return NULL;
}

static void Pump_dealloc(Pump *self) {
    PyTypeObject *type = Py_TYPE((PyObject *)self);
    pump_close(self);
    PyMem_Free(self->slots);
    PyMem_Free(self->arena);
    ((freefunc)PyType_GetSlot(type, Py_tp_free))(self);
    Py_DECREF(type);  /* a heap type: each instance holds a reference to it */
}

static PyMethodDef Pump_methods[] = {  /* the contract of each is in _pump.pyi */
    {"fileno", (PyCFunction)Pump_fileno, METH_NOARGS, "fileno() -> the epoll descriptor"},
    {"add", (PyCFunction)Pump_add, METH_O, "add(fd)"},
    {"remove", (PyCFunction)Pump_remove, METH_O, "remove(fd)"},
    {"arm", (PyCFunction)Pump_arm, METH_VARARGS, "arm(fd, count, expects, heads, body, stride)"},
    {"take", (PyCFunction)Pump_take, METH_O, "take(fd) -> (steps_done, last_send)"},
    {"run", (PyCFunction)Pump_run, METH_VARARGS, "run(budget, busy_poll_seconds) -> handed back"},
    {"active", (PyCFunction)Pump_active, METH_NOARGS, "active() -> how many sockets"},
    {"close", (PyCFunction)Pump_close, METH_NOARGS, "close()"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Pump_slots[] = {
    {Py_tp_doc, "Pump(): answers expected datagrams with prepared ones (see _pump.pyi)."},
    {Py_tp_new, Pump_new}, {Py_tp_dealloc, Pump_dealloc}, {Py_tp_methods, Pump_methods},
    {0, NULL},
};

static PyType_Spec Pump_spec = {.name = "pybootd._pump.Pump", .basicsize = sizeof(Pump),
                                .flags = Py_TPFLAGS_DEFAULT, .slots = Pump_slots};

static int module_exec(PyObject *module) {
    PyObject *type = PyType_FromModuleAndSpec(module, &Pump_spec, NULL);
    if (type == NULL) return -1;
    int failed = PyModule_AddType(module, (PyTypeObject *)type);
    Py_DECREF(type);
    return failed < 0 || PyModule_AddIntMacro(module, SPIN_MISSES) < 0
        || PyModule_AddIntMacro(module, SPIN_PROBE) < 0
        || PyModule_AddIntMacro(module, HANDBACK_MAX) < 0 ? -1 : 0;
}

static PyModuleDef_Slot module_slots[] = {{Py_mod_exec, module_exec}, {0, NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "pybootd._pump", .m_slots = module_slots,
    .m_doc = "Answers expected datagrams with prepared ones, without Python (see _pump.pyi).",
};

PyMODINIT_FUNC PyInit__pump(void) {
    return PyModuleDef_Init(&module);
}
