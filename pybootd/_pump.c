/*
 * pybootd._pump: answer expected datagrams with prepared ones, compiled.
 *
 * Why it exists: with many clients at once the CPU spent per datagram sets
 * the aggregate, and CPython's cost per packet (a wake-up of the loop, a
 * recvfrom, a sendmsg, a few objects) is the limit: 100 lock-step TFTP
 * clients at blksize 1468 cost pybootd 15.1 us of CPU per block through
 * asyncio (0.71x tftpd-hpa), and even a bare Python epoll loop 10.4 us.
 * So the one step that needs no decision runs here: on these sockets, when
 * the next expected datagram arrives from the peer, send the next prepared
 * one, without Python.
 *
 * It knows no protocol. Python arms a socket with steps, each a datagram
 * to expect (compared byte for byte) and the buffers of the datagram that
 * answers it (sent as one datagram with sendmsg, from Python's buffers: no
 * copy). Anything else -- another datagram, one from another address, one
 * after the last step, a send that fails -- disarms the socket and is
 * handed back to Python, in order, with nothing sent for it. Python then
 * takes the count of steps answered and decides. arm_strided() is the same
 * with the steps in three buffers (expected datagrams, reply headers, a
 * body cut by a stride), because building a Python tuple, header and
 * memoryview per step costs the caller about 0.4 us per step, a tenth of
 * what the pump spends per datagram.
 *
 * Busy polling, the one policy here (and its only place): after a wake-up's
 * work the pump may poll for more datagrams for up to busy_poll seconds
 * before the loop sleeps, which spares a wake-up per round trip when peers
 * answer that fast. It stops polling while polls see nothing: after
 * SPIN_MISSES polls in a row that timed out empty, it polls again only once
 * every SPIN_PROBE wake-ups (the peer may have become fast again).
 *
 * Epoll is level-triggered: run() may stop before it has read everything
 * (its budget, HANDBACK_MAX), and what is left keeps the pump's descriptor
 * readable, so the event loop calls run() again.
 *
 * Threads: use a Pump from one thread (the event loop's). The GIL is
 * released while run()'s system calls and busy polling go on, so other
 * threads (file and HTTP readers) are not held up for the poll; no Python
 * object is touched then. A call from another thread during run() raises.
 *
 * Built against the limited API of Python 3.11 (abi3), which has the
 * buffer protocol.
 */
#define PY_SSIZE_T_CLEAN
#ifndef Py_LIMITED_API
#define Py_LIMITED_API 0x030B0000
#endif
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <netdb.h>
#include <netinet/in.h>
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

typedef struct {
    Py_ssize_t expect_off, expect_len;  /* in Slot.expects */
    Py_ssize_t iov_first, iov_count;    /* in Slot.iov */
} Step;

typedef struct {
    int fd;
    struct sockaddr_storage peer;
    socklen_t peerlen;
    int armed;                /* the next datagram from the peer may be answered */
    Py_ssize_t nsteps, next;  /* steps[next] is the one the next datagram must match */
    Step *steps;
    char *expects;            /* the expected datagrams, copied */
    Py_buffer *bufs;          /* the replies' buffers, held until released */
    Py_ssize_t nbufs;
    struct iovec *iov;        /* the replies, as sendmsg takes them, pointing into bufs */
    Py_ssize_t done;          /* steps answered since arm() */
    double last_send;         /* CLOCK_MONOTONIC, as time.monotonic() */
} Slot;

typedef struct {
    int fd;
    Py_ssize_t off, len;      /* in Pump.arena */
    struct sockaddr_storage addr;
    socklen_t addrlen;
} Handback;

typedef struct {
    PyObject_HEAD
    int epfd;                 /* -1 once closed */
    int running;              /* run() is in progress (without the GIL) */
    Slot **slots;             /* indexed by file descriptor */
    int nslots, count;
    int misses, waits;        /* busy-poll adaptation */
    char *arena;              /* received datagrams; handed-back ones kept in order */
    Py_ssize_t arena_cap;
    Handback backs[HANDBACK_MAX];
} Pump;

static double monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* --- the arm of a slot ------------------------------------------------------- */

/* With the GIL: release what the arm holds and disarm (the count stays). */
static void drop_steps(Slot *slot) {
    for (Py_ssize_t i = 0; i < slot->nbufs; i++) PyBuffer_Release(&slot->bufs[i]);
    PyMem_Free(slot->bufs);
    PyMem_Free(slot->iov);
    PyMem_Free(slot->steps);
    PyMem_Free(slot->expects);
    slot->bufs = NULL;
    slot->iov = NULL;
    slot->steps = NULL;
    slot->expects = NULL;
    slot->nbufs = slot->nsteps = slot->next = 0;
    slot->armed = 0;
}

/* A reply as a tuple of buffer objects: one buffer object, or a sequence. */
static PyObject *reply_tuple(PyObject *reply) {
    if (PyObject_CheckBuffer(reply)) return PyTuple_Pack(1, reply);
    return PySequence_Tuple(reply);
}

/* With the GIL: take `steps` into the (disarmed, empty) slot; -1 with an
 * exception set, the slot left empty. Two passes, so that each array is
 * allocated once at its size (a Py_buffer is not moved once filled). */
static int load_steps(Slot *slot, PyObject *steps_arg) {
    int result = -1;
    PyObject *steps = PySequence_Tuple(steps_arg);
    if (steps == NULL) return -1;
    Py_ssize_t n = PyTuple_Size(steps);
    PyObject **replies = PyMem_Calloc(n > 0 ? (size_t)n : 1, sizeof(PyObject *));
    PyObject **expects = PyMem_Calloc(n > 0 ? (size_t)n : 1, sizeof(PyObject *));
    Py_ssize_t nbufs = 0, nexpect = 0;
    if (replies == NULL || expects == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PySequence_Tuple(PyTuple_GetItem(steps, i));
        if (pair == NULL) goto done;
        if (PyTuple_Size(pair) != 2) {
            Py_DECREF(pair);
            PyErr_Format(PyExc_TypeError, "step %zd is not a pair (expect, reply)", i);
            goto done;
        }
        expects[i] = PyTuple_GetItem(pair, 0);
        Py_INCREF(expects[i]);
        replies[i] = reply_tuple(PyTuple_GetItem(pair, 1));
        Py_DECREF(pair);
        if (replies[i] == NULL) goto done;
        Py_ssize_t count = PyTuple_Size(replies[i]);
        if (count > IOV_MAX) {
            PyErr_Format(PyExc_ValueError, "step %zd: more than %d buffers", i, IOV_MAX);
            goto done;
        }
        Py_buffer view;
        if (PyObject_GetBuffer(expects[i], &view, PyBUF_SIMPLE) < 0) goto done;
        nexpect += view.len;
        PyBuffer_Release(&view);
        nbufs += count;
    }
    slot->steps = PyMem_Calloc(n > 0 ? (size_t)n : 1, sizeof(Step));
    slot->expects = PyMem_Malloc(nexpect > 0 ? (size_t)nexpect : 1);
    slot->bufs = PyMem_Calloc(nbufs > 0 ? (size_t)nbufs : 1, sizeof(Py_buffer));
    slot->iov = PyMem_Calloc(nbufs > 0 ? (size_t)nbufs : 1, sizeof(struct iovec));
    if (slot->steps == NULL || slot->expects == NULL || slot->bufs == NULL || slot->iov == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t off = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Step *step = &slot->steps[i];
        Py_buffer view;
        if (PyObject_GetBuffer(expects[i], &view, PyBUF_SIMPLE) < 0) goto done;
        if (off + view.len > nexpect) {  /* an exporter that grew since the first pass */
            PyBuffer_Release(&view);
            PyErr_SetString(PyExc_ValueError, "an expected datagram changed while armed");
            goto done;
        }
        memcpy(slot->expects + off, view.buf, (size_t)view.len);
        step->expect_off = off;
        step->expect_len = view.len;
        off += view.len;
        PyBuffer_Release(&view);
        step->iov_first = slot->nbufs;
        Py_ssize_t count = PyTuple_Size(replies[i]);
        for (Py_ssize_t j = 0; j < count; j++) {
            Py_buffer *buf = &slot->bufs[slot->nbufs];
            if (PyObject_GetBuffer(PyTuple_GetItem(replies[i], j), buf, PyBUF_SIMPLE) < 0)
                goto done;
            slot->iov[slot->nbufs].iov_base = buf->buf;
            slot->iov[slot->nbufs].iov_len = (size_t)buf->len;
            slot->nbufs++;
        }
        step->iov_count = count;
    }
    slot->nsteps = n;
    slot->next = 0;
    result = 0;
done:
    for (Py_ssize_t i = 0; i < n && replies != NULL && expects != NULL; i++) {
        Py_XDECREF(replies[i]);
        Py_XDECREF(expects[i]);
    }
    PyMem_Free(replies);
    PyMem_Free(expects);
    Py_DECREF(steps);
    if (result < 0) drop_steps(slot);
    return result;
}

/* With the GIL: the strided form of arm_strided() into the (disarmed, empty)
 * slot; -1 with an exception set, the slot left empty. */
static int load_strided(Slot *slot, Py_ssize_t n, PyObject *expects, PyObject *heads,
                        PyObject *body, Py_ssize_t stride) {
    Py_buffer view;
    if (n < 0 || stride < 0) {
        PyErr_SetString(PyExc_ValueError, "count and stride must be >= 0");
        return -1;
    }
    slot->bufs = PyMem_Calloc(2, sizeof(Py_buffer));
    if (slot->bufs == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (PyObject_GetBuffer(heads, &slot->bufs[0], PyBUF_SIMPLE) < 0) goto failed;
    slot->nbufs = 1;
    if (PyObject_GetBuffer(body, &slot->bufs[1], PyBUF_SIMPLE) < 0) goto failed;
    slot->nbufs = 2;
    if (PyObject_GetBuffer(expects, &view, PyBUF_SIMPLE) < 0) goto failed;
    Py_ssize_t head_len = n > 0 ? slot->bufs[0].len / n : 0, body_len = slot->bufs[1].len;
    Py_ssize_t expect_len = n > 0 ? view.len / n : 0;
    const char *wrong = NULL;
    int fits;  /* (n - 1) * stride <= body_len <= n * stride, in divisions: no overflow */
    if (n == 0 || stride == 0) fits = body_len == 0;
    else fits = n - 1 <= body_len / stride && body_len / stride + (body_len % stride != 0) <= n;
    if (n > 0 ? view.len % n != 0 : view.len != 0)
        wrong = "expects is not count datagrams of one size";
    else if (n > 0 ? slot->bufs[0].len % n != 0 : slot->bufs[0].len != 0)
        wrong = "heads is not count headers of one size";
    else if (!fits)  /* a body that does not end in the last step is a mistake */
        wrong = "body does not end in the last step's stride";
    if (wrong == NULL) {  /* checked: n is as large as the buffers say */
        slot->steps = PyMem_Calloc(n > 0 ? (size_t)n : 1, sizeof(Step));
        slot->expects = PyMem_Malloc(view.len > 0 ? (size_t)view.len : 1);
        slot->iov = PyMem_Calloc(n > 0 ? 2 * (size_t)n : 1, sizeof(struct iovec));
        if (slot->steps != NULL && slot->expects != NULL)
            memcpy(slot->expects, view.buf, (size_t)view.len);
    }
    PyBuffer_Release(&view);
    if (wrong != NULL) {
        PyErr_SetString(PyExc_ValueError, wrong);
        goto failed;
    }
    if (slot->steps == NULL || slot->expects == NULL || slot->iov == NULL) {
        PyErr_NoMemory();
        goto failed;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Step *step = &slot->steps[i];
        Py_ssize_t start = i * stride, size = body_len - start < stride ? body_len - start : stride;
        step->expect_off = i * expect_len;
        step->expect_len = expect_len;
        step->iov_first = 2 * i;
        step->iov_count = 2;
        slot->iov[2 * i].iov_base = (char *)slot->bufs[0].buf + i * head_len;
        slot->iov[2 * i].iov_len = (size_t)head_len;
        slot->iov[2 * i + 1].iov_base = (char *)slot->bufs[1].buf + start;
        slot->iov[2 * i + 1].iov_len = (size_t)size;
    }
    slot->nsteps = n;
    slot->next = 0;
    return 0;
failed:
    drop_steps(slot);
    return -1;
}

/* --- the batch, without the GIL ------------------------------------------------ */

static int same_peer(const Slot *slot, const struct sockaddr_storage *addr, socklen_t len) {
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

/* Send the reply of the slot's next step if the datagram is what it
 * expects, from the peer: 1 if sent, 0 if the datagram is Python's. */
static int answer(Slot *slot, const char *data, Py_ssize_t len,
                  const struct sockaddr_storage *addr, socklen_t addrlen) {
    if (!slot->armed || slot->next >= slot->nsteps) return 0;
    const Step *step = &slot->steps[slot->next];
    if (len != step->expect_len || memcmp(data, slot->expects + step->expect_off, (size_t)len)
        || !same_peer(slot, addr, addrlen))
        return 0;
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    msg.msg_name = &slot->peer;
    msg.msg_namelen = slot->peerlen;
    msg.msg_iov = slot->iov + step->iov_first;
    msg.msg_iovlen = (size_t)step->iov_count;
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
    if (*idle_since == 0.0) {
        *idle_since = now;
    } else if (now - *idle_since >= spin) {
        self->misses++;
        return 0;
    }
    return 1;
}

/* Room for one more datagram at arena[used], RECV_MAX bytes; -1: no memory. */
static int arena_room(Pump *self, Py_ssize_t used) {
    if (used + RECV_MAX <= self->arena_cap) return 0;
    Py_ssize_t cap = self->arena_cap ? self->arena_cap * 2 : RECV_MAX;
    while (cap < used + RECV_MAX) cap *= 2;
    char *grown = realloc(self->arena, (size_t)cap);  /* no GIL: not PyMem_Realloc */
    if (grown == NULL) return -1;
    self->arena = grown;
    self->arena_cap = cap;
    return 0;
}

/* Read what is ready, answer what matches, keep the rest in self->backs:
 * how many, or -1 if the arena could not grow before any was kept. */
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
            Slot *slot = fd >= 0 && fd < self->nslots ? self->slots[fd] : NULL;
            if (slot == NULL) continue;
            for (int k = 0; k < READS_PER_EVENT && handled < budget && nbacks < HANDBACK_MAX;
                 k++) {
                if (arena_room(self, used) < 0) return nbacks > 0 ? nbacks : -1;
                Handback *back = &self->backs[nbacks];
                back->addrlen = sizeof(back->addr);
                ssize_t len = recvfrom(fd, self->arena + used, RECV_MAX, MSG_DONTWAIT,
                                       (struct sockaddr *)&back->addr, &back->addrlen);
                if (len < 0) {
                    if (errno == EAGAIN || errno == EWOULDBLOCK) break;
                    continue;  /* EINTR, or an ICMP error reported late: read on */
                }
                handled++;
                if (answer(slot, self->arena + used, len, &back->addr, back->addrlen)) {
                    /* The peer's next datagram answers this reply: it is not
                     * there yet, so go to the next socket rather than ask. */
                    break;
                }
                /* Python's, and so is all that follows on this socket, in order. */
                slot->armed = 0;
                back->fd = fd;
                back->off = used;
                back->len = len;
                used += len;
                nbacks++;
            }
        }
    }
    return nbacks;
}

/* --- helpers of the methods -------------------------------------------------- */

static int usable(Pump *self) {
    if (self->running) {
        PyErr_SetString(PyExc_RuntimeError, "the pump is in run() on another thread");
        return 0;
    }
    if (self->epfd < 0) {
        PyErr_SetString(PyExc_ValueError, "the pump is closed");
        return 0;
    }
    return 1;
}

static Slot *find(Pump *self, int fd) {
    return fd >= 0 && fd < self->nslots ? self->slots[fd] : NULL;
}

static int fd_arg(PyObject *arg, int *fd) {
    long value = PyLong_AsLong(arg);
    if (value == -1 && PyErr_Occurred()) return -1;
    if (value < 0 || value > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "bad file descriptor %ld", value);
        return -1;
    }
    *fd = (int)value;
    return 0;
}

static Slot *lookup(Pump *self, PyObject *arg) {
    int fd;
    if (!usable(self) || fd_arg(arg, &fd) < 0) return NULL;
    Slot *slot = find(self, fd);
    if (slot == NULL) PyErr_Format(PyExc_KeyError, "fd %d is not in the pump", fd);
    return slot;
}

/* (host, port) or (host, port, flowinfo, scope_id), host numeric (an IPv6
 * one may end in %scope), as the socket module gives and takes them. */
static int parse_peer(PyObject *peer, struct sockaddr_storage *out, socklen_t *len) {
    const char *host;
    int port;
    unsigned int flowinfo = 0, scope_id = 0;
    if (!PyArg_ParseTuple(peer, "si|II;peer must be (host, port)", &host, &port, &flowinfo,
                          &scope_id))
        return -1;
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "port out of range");
        return -1;
    }
    struct addrinfo hints, *found = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_DGRAM;
    hints.ai_flags = AI_NUMERICHOST;
    if (getaddrinfo(host, NULL, &hints, &found) != 0 || found == NULL
        || found->ai_addrlen > sizeof(*out)) {
        if (found != NULL) freeaddrinfo(found);
        PyErr_Format(PyExc_ValueError, "not a numeric address: %s", host);
        return -1;
    }
    memset(out, 0, sizeof(*out));
    memcpy(out, found->ai_addr, found->ai_addrlen);
    *len = found->ai_addrlen;
    freeaddrinfo(found);
    if (out->ss_family == AF_INET) {
        ((struct sockaddr_in *)out)->sin_port = htons((uint16_t)port);
    } else {
        struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)out;
        v6->sin6_port = htons((uint16_t)port);
        v6->sin6_flowinfo = htonl(flowinfo);
        if (scope_id != 0) v6->sin6_scope_id = scope_id;
    }
    return 0;
}

/* The address as the socket module gives it (its makeipaddr: getnameinfo). */
static PyObject *make_addr(const struct sockaddr_storage *addr, socklen_t len) {
    char host[NI_MAXHOST];
    if (getnameinfo((const struct sockaddr *)addr, len, host, sizeof(host), NULL, 0,
                    NI_NUMERICHOST) != 0)
        host[0] = '\0';
    if (addr->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)addr;
        return Py_BuildValue("(siII)", host, ntohs(a->sin6_port), ntohl(a->sin6_flowinfo),
                             a->sin6_scope_id);
    }
    return Py_BuildValue("(si)", host, ntohs(((const struct sockaddr_in *)addr)->sin_port));
}

static void free_slot(Pump *self, int fd) {
    Slot *slot = self->slots[fd];
    self->slots[fd] = NULL;
    self->count--;
    drop_steps(slot);
    PyMem_Free(slot);
}

static void pump_close(Pump *self) {
    for (int fd = 0; fd < self->nslots; fd++) {
        if (self->slots[fd] != NULL) free_slot(self, fd);
    }
    if (self->epfd >= 0) close(self->epfd);
    self->epfd = -1;
}

/* --- methods ------------------------------------------------------------- */

static PyObject *Pump_fileno(Pump *self, PyObject *Py_UNUSED(ignored)) {
    if (!usable(self)) return NULL;
    return PyLong_FromLong(self->epfd);
}

static PyObject *Pump_add(Pump *self, PyObject *args) {
    int fd;
    PyObject *peer;
    if (!PyArg_ParseTuple(args, "iO:add", &fd, &peer) || !usable(self)) return NULL;
    if (fd < 0) return PyErr_Format(PyExc_ValueError, "bad file descriptor %d", fd);
    if (find(self, fd) != NULL)
        return PyErr_Format(PyExc_ValueError, "fd %d is in the pump already", fd);
    if (!PyTuple_Check(peer)) return PyErr_Format(PyExc_TypeError, "peer must be a tuple");
    struct sockaddr_storage addr;
    socklen_t addrlen;
    if (parse_peer(peer, &addr, &addrlen) < 0) return NULL;
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
    slot->peer = addr;
    slot->peerlen = addrlen;
    struct epoll_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN;  /* level-triggered: see the top of the file */
    ev.data.fd = fd;
    if (epoll_ctl(self->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        PyMem_Free(slot);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    self->slots[fd] = slot;
    self->count++;
    Py_RETURN_NONE;
}

static PyObject *Pump_remove(Pump *self, PyObject *arg) {
    int fd;
    if (!usable(self) || fd_arg(arg, &fd) < 0) return NULL;
    if (find(self, fd) == NULL) Py_RETURN_NONE;
    epoll_ctl(self->epfd, EPOLL_CTL_DEL, fd, NULL);  /* fails if closed already: gone then */
    free_slot(self, fd);
    Py_RETURN_NONE;
}

/* The slot of fd, emptied for a new arm; NULL with an exception set. */
static Slot *rearm(Pump *self, PyObject *fd) {
    Slot *slot = lookup(self, fd);
    if (slot == NULL) return NULL;
    if (slot->done > 0) {
        /* Arming again would lose what was answered: the caller's state
         * would no longer match what the peer got. */
        PyErr_Format(PyExc_ValueError, "fd %d: take() the %zd steps answered first", slot->fd,
                     slot->done);
        return NULL;
    }
    drop_steps(slot);
    return slot;
}

static PyObject *Pump_arm(Pump *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "arm(fd, steps) takes 2 arguments");
        return NULL;
    }
    Slot *slot = rearm(self, args[0]);
    if (slot == NULL) return NULL;
    if (load_steps(slot, args[1]) < 0) return NULL;
    slot->armed = 1;
    Py_RETURN_NONE;
}

static PyObject *Pump_arm_strided(Pump *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "arm_strided(fd, count, expects, heads, body, stride) takes 6 arguments");
        return NULL;
    }
    Py_ssize_t count = PyLong_AsSsize_t(args[1]);
    if (count == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t stride = PyLong_AsSsize_t(args[5]);
    if (stride == -1 && PyErr_Occurred()) return NULL;
    Slot *slot = rearm(self, args[0]);
    if (slot == NULL) return NULL;
    if (load_strided(slot, count, args[2], args[3], args[4], stride) < 0) return NULL;
    slot->armed = 1;
    Py_RETURN_NONE;
}

static PyObject *Pump_take(Pump *self, PyObject *arg) {
    Slot *slot = lookup(self, arg);
    if (slot == NULL) return NULL;
    Py_ssize_t done = slot->done;
    double last = done > 0 ? slot->last_send : 0.0;
    drop_steps(slot);
    slot->done = 0;
    slot->last_send = 0.0;
    return Py_BuildValue("(nd)", done, last);
}

static PyObject *Pump_run(Pump *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "run(budget, busy_poll_seconds) takes 2 arguments");
        return NULL;
    }
    long budget = PyLong_AsLong(args[0]);
    if (budget == -1 && PyErr_Occurred()) return NULL;
    double spin = PyFloat_AsDouble(args[1]);
    if (spin == -1.0 && PyErr_Occurred()) return NULL;
    if (budget < 0 || spin < 0.0 || spin != spin)
        return PyErr_Format(PyExc_ValueError, "budget and busy_poll_seconds must be >= 0");
    if (!usable(self)) return NULL;
    int nbacks;
    self->running = 1;
    Py_BEGIN_ALLOW_THREADS
    nbacks = batch(self, budget > INT_MAX ? INT_MAX : (int)budget, spin);
    Py_END_ALLOW_THREADS
    self->running = 0;
    if (nbacks < 0) return PyErr_NoMemory();
    PyObject *out = PyList_New(nbacks);
    for (int i = 0; i < nbacks; i++) {
        Handback *back = &self->backs[i];
        Slot *slot = find(self, back->fd);
        if (slot != NULL && !slot->armed && slot->steps != NULL) {
            /* Disarmed in the batch: its buffers are not needed any more. */
            Py_ssize_t done = slot->done;
            double last = slot->last_send;
            drop_steps(slot);
            slot->done = done;
            slot->last_send = last;
        }
        if (out == NULL) continue;
        PyObject *addr = make_addr(&back->addr, back->addrlen);
        PyObject *item = addr == NULL ? NULL : Py_BuildValue("(iy#N)", back->fd,
                                                             self->arena + back->off,
                                                             back->len, addr);
        if (item == NULL || PyList_SetItem(out, i, item) < 0) Py_CLEAR(out);
    }
    return out;
}

static PyObject *Pump_close(Pump *self, PyObject *Py_UNUSED(ignored)) {
    if (self->running) {
        PyErr_SetString(PyExc_RuntimeError, "the pump is in run() on another thread");
        return NULL;
    }
    pump_close(self);
    Py_RETURN_NONE;
}

static PyObject *Pump_active(Pump *self, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromLong(self->count);
}

static PyObject *Pump_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    if (PyTuple_Size(args) != 0 || (kw != NULL && PyDict_Size(kw) != 0)) {
        PyErr_SetString(PyExc_TypeError, "Pump() takes no arguments");
        return NULL;
    }
    allocfunc alloc = (allocfunc)PyType_GetSlot(type, Py_tp_alloc);
    Pump *self = (Pump *)alloc(type, 0);
    if (self == NULL) return NULL;
    self->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (self->epfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void Pump_dealloc(Pump *self) {
    PyTypeObject *type = Py_TYPE((PyObject *)self);
    pump_close(self);
    PyMem_Free(self->slots);
    free(self->arena);
    freefunc tp_free = (freefunc)PyType_GetSlot(type, Py_tp_free);
    tp_free(self);
    Py_DECREF(type);  /* a heap type: each instance holds a reference to it */
}

static PyMethodDef Pump_methods[] = {
    {"fileno", (PyCFunction)Pump_fileno, METH_NOARGS,
     "fileno() -> int: the epoll descriptor, readable while a socket in the pump is."},
    {"add", (PyCFunction)Pump_add, METH_VARARGS,
     "add(fd, peer): read this UDP socket; only datagrams from peer (host, port) "
     "can be answered."},
    {"remove", (PyCFunction)Pump_remove, METH_O,
     "remove(fd): forget the socket and what it was armed with (before closing it)."},
    {"arm", (PyCFunction)(void (*)(void))Pump_arm, METH_FASTCALL,
     "arm(fd, steps): steps is a sequence of (expect, reply): while armed, the next "
     "datagram from the peer equal to steps[i]'s expect is answered with its reply "
     "(a buffer or a sequence of buffers, sent as one datagram)."},
    {"arm_strided", (PyCFunction)(void (*)(void))Pump_arm_strided, METH_FASTCALL,
     "arm_strided(fd, count, expects, heads, body, stride): arm(fd, steps) with count "
     "steps, step i expecting the i-th equal slice of expects and replying with the i-th "
     "equal slice of heads, then body[i * stride:(i + 1) * stride]."},
    {"take", (PyCFunction)Pump_take, METH_O,
     "take(fd) -> (steps_done, last_send): disarm; how many steps were answered since "
     "arm() and when the last reply went out (time.monotonic()); (0, 0.0) if none."},
    {"run", (PyCFunction)(void (*)(void))Pump_run, METH_FASTCALL,
     "run(budget, busy_poll_seconds) -> [(fd, data, addr)]: read what is ready, answer "
     "what matches, return the others in order (each disarmed its socket)."},
    {"active", (PyCFunction)Pump_active, METH_NOARGS, "active() -> int: how many sockets."},
    {"close", (PyCFunction)Pump_close, METH_NOARGS, "close(): forget every socket, close."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Pump_slots[] = {
    {Py_tp_doc, "Pump(): answers expected datagrams with prepared ones (see _pump.pyi)."},
    {Py_tp_new, Pump_new},
    {Py_tp_dealloc, Pump_dealloc},
    {Py_tp_methods, Pump_methods},
    {0, NULL},
};

static PyType_Spec Pump_spec = {
    .name = "pybootd._pump.Pump",
    .basicsize = sizeof(Pump),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = Pump_slots,
};

static int module_exec(PyObject *module) {
    PyObject *type = PyType_FromModuleAndSpec(module, &Pump_spec, NULL);
    if (type == NULL) return -1;
    int failed = PyModule_AddType(module, (PyTypeObject *)type);
    Py_DECREF(type);
    if (failed < 0 || PyModule_AddIntConstant(module, "SPIN_MISSES", SPIN_MISSES) < 0
        || PyModule_AddIntConstant(module, "SPIN_PROBE", SPIN_PROBE) < 0
        || PyModule_AddIntConstant(module, "HANDBACK_MAX", HANDBACK_MAX) < 0)
        return -1;
    return 0;
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pybootd._pump",
    .m_doc = "Answers expected datagrams with prepared ones, without Python (see _pump.pyi).",
    .m_size = 0,
    .m_slots = module_slots,
};

PyMODINIT_FUNC PyInit__pump(void) {
    return PyModuleDef_Init(&module);
}
