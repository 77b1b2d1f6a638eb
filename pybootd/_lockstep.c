/*
 * pybootd._lockstep: the per-block path of lock-step TFTP reads, compiled.
 *
 * Why (scripts/bench_tftp.py, 100 atftp clients x 8 MiB, blksize 1468, on
 * loopback on a 2-core VM): served through asyncio, pybootd reached 0.71x
 * tftpd-hpa's aggregate at 15.1 us of CPU per DATA block. A minimal
 * pure-Python server, one epoll loop and nothing else per block, reached
 * only 0.92x at 10.4 us: CPython's cost per packet is the limit, not the
 * design of the Python code.
 *
 * What it does, and no more: the transfers' sockets sit in one epoll set.
 * A Python caller arms a transfer with the block it last sent and a buffer
 * holding the blocks that follow. When that block's ACK arrives (exactly 4
 * bytes, from the transfer's peer), the next block goes out from the buffer
 * with one sendmsg, here. Everything else -- any other datagram, the end of
 * the buffer, a send that fails, timers -- is handed back to Python, which
 * first takes the state (the block last sent, when, how many) and drives the
 * same sans-IO session as without this module. The protocol decisions stay
 * in pybootd/tftp/session.py; this is only a shortcut for the one case that
 * needs no decision (RFC 1350 section 2, lock-step: DATA n+1 answers ACK n).
 *
 * The sockets sit in one epoll set whose descriptor the stock asyncio loop
 * watches (loop.add_reader), like any other.
 *
 * The GIL is released while the batch's system calls run; Python objects
 * are only touched with it held.
 */
#include "_lockstep.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#define RECV_MAX (65536 + 4)  /* the largest datagram kept, as in Python */
#define EVENTS 64
#define HANDBACK_MAX 64       /* datagrams for Python per run() */
#define READS_PER_EVENT 8     /* datagrams read from one socket per wake-up */

double lockstep_monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int lockstep_same_peer(const Slot *slot, const struct sockaddr_storage *addr, socklen_t len) {
    if (addr->ss_family != slot->peer.ss_family) return 0;
    if (addr->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)addr;
        const struct sockaddr_in *p = (const struct sockaddr_in *)&slot->peer;
        return len >= (socklen_t)sizeof(*a) && a->sin_port == p->sin_port
            && a->sin_addr.s_addr == p->sin_addr.s_addr;
    }
    if (addr->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)addr;
        const struct sockaddr_in6 *p = (const struct sockaddr_in6 *)&slot->peer;
        return len >= (socklen_t)sizeof(*a) && a->sin6_port == p->sin6_port
            && a->sin6_scope_id == p->sin6_scope_id
            && memcmp(&a->sin6_addr, &p->sin6_addr, sizeof(a->sin6_addr)) == 0;
    }
    return 0;
}

long long lockstep_next_block(const Slot *slot, const unsigned char *data, ssize_t len,
                              const struct sockaddr_storage *addr, socklen_t addrlen,
                              long long *size) {
    if (!slot->armed || len != 4 || data[0] != 0 || data[1] != OP_ACK) return -1;
    if (((data[2] << 8) | data[3]) != (slot->sent & 0xFFFF)) return -1;
    if (!lockstep_same_peer(slot, addr, addrlen)) return -1;
    long long offset = (slot->sent + 1 - slot->first) * (long long)slot->blksize;
    if (offset < 0 || offset >= (long long)slot->chunk.len) return -1;
    *size = (long long)slot->chunk.len - offset;
    if (*size > slot->blksize) *size = slot->blksize;
    return offset;
}

int lockstep_spin_more(Pump *self, double *idle_since, double spin) {
    /* Busy-poll for up to `spin` seconds before the loop sleeps, while such
     * polls see ACKs; after spin_misses in a row that saw none, only once
     * every spin_probe wake-ups. */
    if (*idle_since == 0.0 && self->misses >= self->spin_misses) {
        if (++self->waits < self->spin_probe) return 0;
        self->waits = 0;
        self->misses = self->spin_misses - 1;
    }
    double now = lockstep_monotonic();
    if (*idle_since == 0.0) {
        *idle_since = now;
    } else if (now - *idle_since >= spin) {
        self->misses++;
        return 0;
    }
    return 1;
}

int lockstep_keep(Handback *back, int fd, const char *data, ssize_t len,
                  const struct sockaddr_storage *addr, socklen_t addrlen) {
    back->data = malloc(len > 0 ? (size_t)len : 1);
    if (back->data == NULL) return -1;
    memcpy(back->data, data, (size_t)len);
    back->fd = fd;
    back->len = len;
    back->addr = *addr;
    back->addrlen = addrlen;
    return 0;
}

void lockstep_drop_chunk(Slot *slot) {
    slot->armed = 0;
    if (!slot->has_chunk) return;
    PyBuffer_Release(&slot->chunk);
    slot->has_chunk = 0;
}

/* Answer an ACK from the peer with the next DATA block, if that needs no
 * decision: 1 if sent, 0 if the datagram is Python's. */
static int answer(Slot *slot, const unsigned char *data, ssize_t len,
                  const struct sockaddr_storage *addr, socklen_t addrlen) {
    long long size;
    long long offset = lockstep_next_block(slot, data, len, addr, addrlen, &size);
    if (offset < 0) return 0;
    long long next = slot->sent + 1;
    unsigned char header[4] = {0, OP_DATA, (unsigned char)((next >> 8) & 0xFF),
                               (unsigned char)(next & 0xFF)};
    struct iovec iov[2] = {{header, 4}, {(char *)slot->chunk.buf + offset, (size_t)size}};
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    msg.msg_name = &slot->peer;
    msg.msg_namelen = slot->peerlen;
    msg.msg_iov = iov;
    msg.msg_iovlen = 2;
    ssize_t done;
    do {
        done = sendmsg(slot->fd, &msg, MSG_DONTWAIT);
    } while (done < 0 && errno == EINTR);
    if (done < 0) return 0;  /* Python sends it again and reports the error */
    slot->sent = next;
    slot->sent_at = lockstep_monotonic();
    slot->packets += 1;
    return 1;
}

/* Read what is ready, answer the ACKs that need no decision, and count what
 * Python must see. Runs without the GIL. */
static int pump_batch(Pump *self, int budget, double spin, Handback *backs, int *nbacks) {
    struct epoll_event events[EVENTS];
    int handled = 0;
    double idle_since = 0.0;
    while (handled < budget && *nbacks < HANDBACK_MAX) {
        int n = epoll_wait(self->epfd, events, EVENTS, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) break;
        if (n == 0) {
            if (spin <= 0.0 || *nbacks > 0 || !lockstep_spin_more(self, &idle_since, spin)) break;
            continue;
        }
        if (idle_since != 0.0) self->misses = 0;
        idle_since = 0.0;
        for (int i = 0; i < n && *nbacks < HANDBACK_MAX; i++) {
            int fd = events[i].data.fd;
            Slot *slot = fd >= 0 && fd < self->nslots ? self->slots[fd] : NULL;
            if (slot == NULL) continue;
            for (int k = 0; k < READS_PER_EVENT && *nbacks < HANDBACK_MAX; k++) {
                struct sockaddr_storage addr;
                socklen_t addrlen = sizeof(addr);
                ssize_t len = recvfrom(fd, self->buffer, RECV_MAX, MSG_DONTWAIT,
                                       (struct sockaddr *)&addr, &addrlen);
                if (len < 0) {
                    if (errno == EAGAIN || errno == EWOULDBLOCK) break;
                    continue;  /* EINTR, or an ICMP error reported late: read on */
                }
                handled++;
                if (answer(slot, (const unsigned char *)self->buffer, len, &addr, addrlen)) {
                    break;  /* lock-step: nothing more comes before our DATA */
                }
                /* Python's, and so is what follows from this peer, in order. */
                slot->armed = 0;
                if (lockstep_keep(&backs[*nbacks], fd, self->buffer, len, &addr, addrlen) < 0)
                    return -1;
                (*nbacks)++;
            }
        }
    }
    return 0;
}

/* --- helpers of the methods -------------------------------------------------- */

static Slot *find(Pump *self, int fd) {
    if (fd < 0 || fd >= self->nslots) return NULL;
    return self->slots[fd];
}

static Slot *lookup(Pump *self, int fd) {
    Slot *slot = find(self, fd);
    if (slot == NULL) PyErr_Format(PyExc_KeyError, "fd %d is not in the pump", fd);
    return slot;
}

static int closed(Pump *self) {
    if (self->epfd >= 0) return 0;
    PyErr_SetString(PyExc_ValueError, "the pump is closed");
    return 1;
}

static int parse_peer(PyObject *peer, struct sockaddr_storage *out, socklen_t *len) {
    const char *host;
    int port;
    unsigned int flowinfo = 0, scope_id = 0;
    if (!PyArg_ParseTuple(peer, "si|II", &host, &port, &flowinfo, &scope_id)) return -1;
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "port out of range");
        return -1;
    }
    memset(out, 0, sizeof(*out));
    struct sockaddr_in *v4 = (struct sockaddr_in *)out;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)out;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        *len = sizeof(*v4);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        v6->sin6_flowinfo = htonl(flowinfo);
        v6->sin6_scope_id = scope_id;
        *len = sizeof(*v6);
        return 0;
    }
    PyErr_Format(PyExc_ValueError, "not a numeric address: %s", host);
    return -1;
}

/* The address as the socket module gives it: (host, port) or
 * (host, port, flowinfo, scope_id). */
static PyObject *make_addr(const struct sockaddr_storage *addr) {
    char host[INET6_ADDRSTRLEN];
    if (addr->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)addr;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
        return Py_BuildValue("(si)", host, ntohs(a->sin_port));
    }
    if (addr->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)addr;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
        return Py_BuildValue("(siII)", host, ntohs(a->sin6_port), ntohl(a->sin6_flowinfo),
                             a->sin6_scope_id);
    }
    return Py_BuildValue("(si)", "", 0);
}

/* [(fd, datagram, addr)] from `backs`, whose data it frees. */
static PyObject *handed_back(Handback *backs, int nbacks) {
    PyObject *out = PyList_New(nbacks);
    for (int i = 0; i < nbacks; i++) {
        if (out != NULL) {
            PyObject *item = Py_BuildValue("(iy#N)", backs[i].fd, backs[i].data,
                                           backs[i].len, make_addr(&backs[i].addr));
            if (item == NULL) Py_CLEAR(out);
            else PyList_SET_ITEM(out, i, item);
        }
        free(backs[i].data);
    }
    return out;
}

/* --- methods ------------------------------------------------------------- */

static PyObject *Pump_fileno(Pump *self, PyObject *Py_UNUSED(ignored)) {
    if (closed(self)) return NULL;
    return PyLong_FromLong(self->epfd);
}

static int grow(Pump *self, int fd) {
    if (fd < self->nslots) return 0;
    int size = self->nslots ? self->nslots : 64;
    while (size <= fd) size *= 2;
    Slot **grown = PyMem_Realloc(self->slots, sizeof(Slot *) * (size_t)size);
    if (grown == NULL) return -1;
    memset(grown + self->nslots, 0, sizeof(Slot *) * (size_t)(size - self->nslots));
    self->slots = grown;
    self->nslots = size;
    return 0;
}

static PyObject *Pump_add(Pump *self, PyObject *args) {
    int fd;
    PyObject *peer;
    if (!PyArg_ParseTuple(args, "iO!", &fd, &PyTuple_Type, &peer) || closed(self)) return NULL;
    if (fd < 0) return PyErr_Format(PyExc_ValueError, "bad fd %d", fd);
    if (find(self, fd) != NULL) return PyErr_Format(PyExc_ValueError, "fd %d is already in", fd);
    Slot *slot = PyMem_Calloc(1, sizeof(Slot));
    if (slot == NULL) return PyErr_NoMemory();
    slot->fd = fd;
    if (parse_peer(peer, &slot->peer, &slot->peerlen) < 0) {
        PyMem_Free(slot);
        return NULL;
    }
    if (grow(self, fd) < 0) {
        PyMem_Free(slot);
        return PyErr_NoMemory();
    }
    struct epoll_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (epoll_ctl(self->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        PyMem_Free(slot);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    self->slots[fd] = slot;
    self->active++;
    Py_RETURN_NONE;
}

static PyObject *Pump_remove(Pump *self, PyObject *arg) {
    int fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred()) return NULL;
    Slot *slot = find(self, fd);
    if (slot == NULL) Py_RETURN_NONE;
    self->slots[fd] = NULL;
    self->active--;
    lockstep_drop_chunk(slot);
    epoll_ctl(self->epfd, EPOLL_CTL_DEL, fd, NULL);  /* gone already if it was closed */
    PyMem_Free(slot);
    Py_RETURN_NONE;
}

static PyObject *Pump_arm(Pump *self, PyObject *args) {
    int fd;
    long long sent, first;
    Py_ssize_t blksize;
    PyObject *chunk;
    if (!PyArg_ParseTuple(args, "iLOLn", &fd, &sent, &chunk, &first, &blksize)) return NULL;
    Slot *slot = lookup(self, fd);
    if (slot == NULL) return NULL;
    if (blksize < 1) return PyErr_Format(PyExc_ValueError, "bad blksize %zd", blksize);
    lockstep_drop_chunk(slot);
    if (PyObject_GetBuffer(chunk, &slot->chunk, PyBUF_SIMPLE) < 0) return NULL;
    slot->has_chunk = 1;
    slot->sent = sent;
    slot->first = first;
    slot->blksize = blksize;
    slot->armed = 1;
    Py_RETURN_NONE;
}

static PyObject *Pump_take(Pump *self, PyObject *arg) {
    int fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred()) return NULL;
    Slot *slot = lookup(self, fd);
    if (slot == NULL) return NULL;
    long long packets = slot->packets;
    slot->packets = 0;
    lockstep_drop_chunk(slot);
    if (packets == 0) return Py_BuildValue("(LdL)", -1LL, 0.0, 0LL);
    return Py_BuildValue("(LdL)", slot->sent, slot->sent_at, packets);
}

static PyObject *Pump_run(Pump *self, PyObject *args) {
    int budget;
    double spin = 0.0;
    if (!PyArg_ParseTuple(args, "i|d", &budget, &spin) || closed(self)) return NULL;
    int failed;
    Handback backs[HANDBACK_MAX];
    int nbacks = 0;
    Py_BEGIN_ALLOW_THREADS
    failed = pump_batch(self, budget, spin, backs, &nbacks);
    Py_END_ALLOW_THREADS
    PyObject *out = handed_back(backs, nbacks);
    if (failed) {
        Py_XDECREF(out);
        return PyErr_NoMemory();
    }
    return out;
}

static PyObject *Pump_close(Pump *self, PyObject *Py_UNUSED(ignored)) {
    for (int fd = 0; fd < self->nslots; fd++) {
        Slot *slot = self->slots[fd];
        if (slot == NULL) continue;
        self->slots[fd] = NULL;
        lockstep_drop_chunk(slot);
        PyMem_Free(slot);
    }
    self->active = 0;
    if (self->epfd >= 0) {
        close(self->epfd);
        self->epfd = -1;
    }
    Py_RETURN_NONE;
}

static int Pump_init(Pump *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"spin_misses", "spin_probe", NULL};
    int spin_misses, spin_probe;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "ii", names, &spin_misses, &spin_probe))
        return -1;
    self->spin_misses = spin_misses;
    self->spin_probe = spin_probe;
    if (self->epfd >= 0) return 0;
    self->buffer = PyMem_Malloc(RECV_MAX);
    if (self->buffer == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (self->epfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

static PyObject *Pump_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    (void)args;  /* Pump_init parses them */
    (void)kw;
    Pump *self = (Pump *)type->tp_alloc(type, 0);
    if (self != NULL) self->epfd = -1;
    return (PyObject *)self;
}

static void Pump_dealloc(Pump *self) {
    PyObject *done = Pump_close(self, NULL);
    Py_XDECREF(done);
    PyMem_Free(self->slots);
    PyMem_Free(self->buffer);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Pump_methods[] = {
    {"fileno", (PyCFunction)Pump_fileno, METH_NOARGS,
     "The epoll descriptor: readable when a socket in the pump is."},
    {"add", (PyCFunction)Pump_add, METH_VARARGS,
     "add(fd, peer): watch a transfer's socket; peer as the socket module gives it."},
    {"remove", (PyCFunction)Pump_remove, METH_O, "remove(fd): forget it (before closing it)."},
    {"arm", (PyCFunction)Pump_arm, METH_VARARGS,
     "arm(fd, sent, chunk, first, blksize): answer the ACK of block `sent` (absolute) "
     "and the following ones from `chunk`, whose offset 0 is block `first`."},
    {"take", (PyCFunction)Pump_take, METH_O,
     "take(fd) -> (sent, sent_at, packets): disarm; the last block sent here and when "
     "(time.monotonic()), and how many since the last take; (-1, 0.0, 0) if none."},
    {"run", (PyCFunction)Pump_run, METH_VARARGS,
     "run(budget, spin=0.0) -> [(fd, datagram, addr)]: answer what needs no decision, "
     "for up to `budget` datagrams, busy-polling up to `spin` seconds when none is "
     "ready (adaptive); return the others, in order."},
    {"close", (PyCFunction)Pump_close, METH_NOARGS, "Close the pump's descriptors."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject PumpType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pybootd._lockstep.Pump",
    .tp_basicsize = sizeof(Pump),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Answers lock-step TFTP ACKs with the next DATA block, without Python.",
    .tp_new = Pump_new,
    .tp_init = (initproc)Pump_init,
    .tp_dealloc = (destructor)Pump_dealloc,
    .tp_methods = Pump_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pybootd._lockstep",
    .m_doc = "Compiled per-block path of lock-step TFTP reads (see pybootd/server/tftp_pump.py).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__lockstep(void) {
    if (PyType_Ready(&PumpType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&PumpType);
    if (PyModule_AddObject(m, "Pump", (PyObject *)&PumpType) < 0) {
        Py_DECREF(&PumpType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
