/*
 * pybootd._lockstep, io_uring backend: the same pump, its system calls
 * batched across every transfer.
 *
 * Why (100 busybox clients x 8 MiB at blksize 1468 on loopback, this 2-core
 * VM, interleaved runs): a scratch C server doing recvfrom + sendmsg per
 * ready socket from epoll served 97.7-100.9 MB/s; the same server with one
 * RECVMSG always queued per socket, each ACK's SENDMSG queued as its
 * completion is read and one io_uring_enter for all of them served
 * 103.7-118.4 MB/s, with 0.03 preemptions per block instead of 0.17-0.21.
 * That needs IORING_SETUP_DEFER_TASKRUN: with completions run from the
 * kernel's task work (no DEFER_TASKRUN) and a wait in epoll on the ring it
 * served 74.6-110.7. So the thread waits in io_uring_enter itself: the
 * event loop's selector (pybootd/server/tftp_pump.py, RingSelector) waits
 * here while transfers are in the ring, with a poll of the loop's own epoll
 * descriptor in the ring, so any other socket, a timer or a thread's
 * call_soon_threadsafe ends the wait.
 *
 * Lifetimes: the kernel reads a slot's send header, iovecs and chunk and
 * writes its receive buffer and address while those operations are in
 * flight. A slot is freed only when neither is (a removed one is kept,
 * dead, until its cancelled receive completes); a chunk replaced while a
 * send reads it is kept (retired) until that send completes; a queued
 * operation is always submitted before Python runs again, so it can never
 * resolve a descriptor number that Python closed and reused.
 *
 * With DEFER_TASKRUN the kernel completes operations only inside
 * io_uring_enter on this thread (IORING_SETUP_SINGLE_ISSUER: the thread
 * that made the ring, the event loop's).
 */
#include "_lockstep.h"

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__linux__) && defined(__has_include)
#if __has_include(<linux/io_uring.h>) && __has_include(<sys/eventfd.h>)
#include <linux/io_uring.h>
#include <sys/eventfd.h>
#if defined(IORING_SETUP_DEFER_TASKRUN) && defined(IORING_ENTER_EXT_ARG) \
    && defined(__NR_io_uring_setup)
#define HAVE_RING 1
#endif
#endif
#endif

#ifndef HAVE_RING

/* Headers older than Linux 6.1, or not Linux: the epoll backend only. */
int ring_available(void) { return 0; }
Ring *ring_open(int entries) { (void)entries; errno = ENOSYS; return NULL; }
void ring_close(Pump *self) { (void)self; }
int ring_fileno(const Ring *ring) { (void)ring; return -1; }
int ring_add(Pump *self, Slot *slot) { (void)self; (void)slot; errno = ENOSYS; return -1; }
void ring_remove(Pump *self, Slot *slot) { (void)self; (void)slot; }
int ring_wait(Pump *self, int epfd, double timeout, double spin, int budget) {
    (void)self; (void)epfd; (void)timeout; (void)spin; (void)budget;
    errno = ENOSYS;
    return -1;
}
int ring_poll(Pump *self) { (void)self; errno = ENOSYS; return -1; }
void ring_sweep(Pump *self) { (void)self; }
void ring_clear(Ring *ring) { (void)ring; }

#else

enum { TAG_RECV = 1, TAG_SEND = 2, TAG_CANCEL = 3, TAG_EPFD = 4, TAG_MASK = 7 };
#define TAG(slot, kind) ((uint64_t)(uintptr_t)(slot) | (uint64_t)(kind))
#define CLOSE_WAIT 1.0  /* seconds close() waits for cancelled operations */

struct Ring {
    int fd, efd;
    unsigned *sq_head, *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
    unsigned sq_entries;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
    void *rings;
    size_t rings_len, sqes_len;
    int epfd_polled;           /* a POLL_ADD of the loop's epoll is in flight */
    int epfd_ready;            /* it completed during this wait */
    int signalled;             /* efd was written and not read since */
    int sweep;                 /* a retired chunk or a dead slot may be freed */
    int handled;               /* datagrams read during this wait */
    Slot *dead;                /* removed slots with an operation in flight */
};

static int sys_enter(Ring *r, unsigned submit, unsigned min_complete, unsigned flags,
                     void *arg, size_t argsz) {
    return (int)syscall(__NR_io_uring_enter, r->fd, submit, min_complete, flags, arg, argsz);
}

static unsigned unsubmitted(const Ring *r) {
    return *r->sq_tail - __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE);
}

/* Submit what is queued and let the kernel complete what it can; with
 * min_complete, wait for that many completions or `timeout` (< 0: none).
 * 0, or 1 if a signal came, or -1. */
static int enter(Ring *r, unsigned min_complete, double timeout) {
    unsigned flags = IORING_ENTER_GETEVENTS;  /* DEFER_TASKRUN: runs the completions */
    struct __kernel_timespec ts;
    struct io_uring_getevents_arg arg;
    void *argp = NULL;
    size_t argsz = 0;
    if (min_complete && timeout >= 0) {
        ts.tv_sec = (long long)timeout;
        ts.tv_nsec = (long long)((timeout - (double)ts.tv_sec) * 1e9);
        memset(&arg, 0, sizeof(arg));
        arg.ts = (uint64_t)(uintptr_t)&ts;
        flags |= IORING_ENTER_EXT_ARG;
        argp = &arg;
        argsz = sizeof(arg);
    }
    if (sys_enter(r, unsubmitted(r), min_complete, flags, argp, argsz) >= 0) return 0;
    /* EINTR: a signal, whose Python handler runs once the wait returns;
     * ETIME: the timeout; EBUSY/EAGAIN: completions to reap first. */
    if (errno == EINTR) return 1;
    if (errno == ETIME || errno == EBUSY || errno == EAGAIN) return 0;
    return -1;
}

/* A zeroed SQE to fill, or NULL if the queue is full even after a submit. */
static struct io_uring_sqe *sqe_get(Ring *r) {
    if (unsubmitted(r) >= r->sq_entries && (enter(r, 0, 0) < 0 || unsubmitted(r) >= r->sq_entries))
        return NULL;
    unsigned index = *r->sq_tail & *r->sq_mask;
    r->sq_array[index] = index;
    memset(&r->sqes[index], 0, sizeof(r->sqes[index]));
    return &r->sqes[index];
}

/* Make the SQE just filled visible to the next io_uring_enter. */
static void sqe_push(Ring *r) {
    __atomic_store_n(r->sq_tail, *r->sq_tail + 1, __ATOMIC_RELEASE);
}

/* A RECVMSG or SENDMSG of `msg` on the slot's socket. */
static int queue_msg(Ring *r, int opcode, Slot *slot, struct msghdr *msg, int kind) {
    struct io_uring_sqe *sqe = sqe_get(r);
    if (sqe == NULL) return -1;
    sqe->opcode = (unsigned char)opcode;
    sqe->fd = slot->fd;
    sqe->addr = (uint64_t)(uintptr_t)msg;
    sqe->len = 1;
    sqe->user_data = TAG(slot, kind);
    sqe_push(r);
    return 0;
}

static int queue_recv(Ring *r, Slot *slot) {
    slot->riov.iov_base = slot->rbuf;
    slot->riov.iov_len = sizeof(slot->rbuf);
    memset(&slot->rmsg, 0, sizeof(slot->rmsg));
    slot->rmsg.msg_name = &slot->raddr;
    slot->rmsg.msg_namelen = sizeof(slot->raddr);
    slot->rmsg.msg_iov = &slot->riov;
    slot->rmsg.msg_iovlen = 1;
    if (queue_msg(r, IORING_OP_RECVMSG, slot, &slot->rmsg, TAG_RECV) < 0) return -1;
    slot->recv_inflight = 1;
    return 0;
}

/* DATA `sent + 1` from the chunk (RFC 1350 section 5), to the peer. */
static int queue_send(Ring *r, Slot *slot, long long offset, long long size) {
    long long next = slot->sent + 1;
    slot->shdr[0] = 0;
    slot->shdr[1] = OP_DATA;
    slot->shdr[2] = (unsigned char)((next >> 8) & 0xFF);
    slot->shdr[3] = (unsigned char)(next & 0xFF);
    slot->siov[0].iov_base = slot->shdr;
    slot->siov[0].iov_len = 4;
    slot->siov[1].iov_base = (char *)slot->chunk.buf + offset;
    slot->siov[1].iov_len = (size_t)size;
    memset(&slot->smsg, 0, sizeof(slot->smsg));
    slot->smsg.msg_name = &slot->peer;
    slot->smsg.msg_namelen = slot->peerlen;
    slot->smsg.msg_iov = slot->siov;
    slot->smsg.msg_iovlen = 2;
    if (queue_msg(r, IORING_OP_SENDMSG, slot, &slot->smsg, TAG_SEND) < 0) return -1;
    slot->send_inflight = 1;
    slot->send_reads_chunk = 1;
    slot->sent = next;
    slot->sent_at = lockstep_monotonic();
    slot->packets += 1;
    return 0;
}

static int queue_simple(Ring *r, int opcode, int fd, uint64_t addr, uint64_t tag) {
    struct io_uring_sqe *sqe = sqe_get(r);
    if (sqe == NULL) return -1;
    sqe->opcode = (unsigned char)opcode;
    sqe->fd = fd;
    sqe->addr = addr;
    if (opcode == IORING_OP_POLL_ADD) sqe->poll32_events = POLLIN;
    sqe->user_data = tag;
    sqe_push(r);
    return 0;
}

static int push_back(Pump *self, Slot *slot, ssize_t len) {
    if (self->nqueue == self->queue_cap) {
        int cap = self->queue_cap ? self->queue_cap * 2 : 64;
        Handback *grown = PyMem_RawRealloc(self->queue, sizeof(Handback) * (size_t)cap);
        if (grown == NULL) return -1;
        self->queue = grown;
        self->queue_cap = cap;
    }
    if (lockstep_keep(&self->queue[self->nqueue], slot->fd, (const char *)slot->rbuf, len,
                      &slot->raddr, slot->rmsg.msg_namelen) < 0)
        return -1;
    self->nqueue++;
    return 0;
}

/* A datagram came: answer it if it needs no decision, else keep it for
 * Python; then read the next (one receive in flight per socket keeps the
 * order). */
static int received(Pump *self, Slot *slot, int res) {
    Ring *r = self->ring;
    if (res < 0) {
        if (res == -ECANCELED || res == -EBADF || res == -ENOTSOCK) return 0;
        return queue_recv(r, slot);  /* EINTR, or an ICMP error reported late: read on */
    }
    r->handled++;
    long long size = 0;
    long long offset = slot->send_inflight ? -1 :
        lockstep_next_block(slot, slot->rbuf, res, &slot->raddr, slot->rmsg.msg_namelen, &size);
    if (offset < 0 || queue_send(r, slot, offset, size) < 0) {
        /* Python's, and so is what follows from this peer, in order. */
        slot->armed = 0;
        if (push_back(self, slot, res) < 0) return -1;
    }
    return queue_recv(r, slot);
}

static int complete(Pump *self, uint64_t tag, int res) {
    Ring *r = self->ring;
    Slot *slot = (Slot *)(uintptr_t)(tag & ~(uint64_t)TAG_MASK);
    switch ((int)(tag & TAG_MASK)) {
    case TAG_EPFD:
        r->epfd_polled = 0;
        r->epfd_ready = 1;
        return 0;
    case TAG_SEND:
        slot->send_inflight = 0;
        slot->send_reads_chunk = 0;
        /* A failed send is a lost packet: the transfer's timer sends it
         * again from Python, which reports an error that lasts. */
        if (slot->has_retired || (slot->dead && !slot->recv_inflight)) r->sweep = 1;
        return 0;
    case TAG_RECV:
        slot->recv_inflight = 0;
        if (slot->dead) {
            if (!slot->send_inflight) r->sweep = 1;
            return 0;
        }
        return received(self, slot, res);
    default:  /* TAG_CANCEL */
        return 0;
    }
}

/* Handle every completion posted; the number of them, or -1 (no memory). */
static int reap(Pump *self) {
    Ring *r = self->ring;
    int count = 0;
    for (;;) {
        unsigned head = *r->cq_head;
        if (head == __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE)) return count;
        struct io_uring_cqe cqe = r->cqes[head & *r->cq_mask];
        __atomic_store_n(r->cq_head, head + 1, __ATOMIC_RELEASE);
        if (complete(self, cqe.user_data, cqe.res) < 0) return -1;
        count++;
    }
}

int ring_available(void) { return 1; }

int ring_fileno(const Ring *ring) { return ring->efd; }

static void unmap(Ring *r) {
    if (r->rings != NULL && r->rings != MAP_FAILED) munmap(r->rings, r->rings_len);
    if (r->sqes != NULL && (void *)r->sqes != MAP_FAILED) munmap(r->sqes, r->sqes_len);
    if (r->efd >= 0) close(r->efd);
    if (r->fd >= 0) close(r->fd);
    PyMem_RawFree(r);
}

Ring *ring_open(int entries) {
    Ring *r = PyMem_RawCalloc(1, sizeof(Ring));
    if (r == NULL) return NULL;
    r->efd = -1;
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    r->fd = (int)syscall(__NR_io_uring_setup, (unsigned)entries, &p);
    if (r->fd < 0) {
        int err = errno;  /* ENOSYS, EPERM (kernel.io_uring_disabled, seccomp), EINVAL */
        PyMem_RawFree(r);
        errno = err;
        return NULL;
    }
    unsigned needed = IORING_FEAT_SINGLE_MMAP | IORING_FEAT_NODROP | IORING_FEAT_EXT_ARG;
    size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    r->rings_len = sq_len > cq_len ? sq_len : cq_len;
    r->sqes_len = p.sq_entries * sizeof(struct io_uring_sqe);
    if ((p.features & needed) != needed) {
        unmap(r);
        errno = ENOSYS;
        return NULL;
    }
    r->rings = mmap(NULL, r->rings_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                    r->fd, IORING_OFF_SQ_RING);
    r->sqes = mmap(NULL, r->sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                   r->fd, IORING_OFF_SQES);
    r->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (r->rings == MAP_FAILED || (void *)r->sqes == MAP_FAILED || r->efd < 0) {
        int err = errno;
        unmap(r);
        errno = err;
        return NULL;
    }
    char *base = r->rings;
    r->sq_head = (unsigned *)(base + p.sq_off.head);
    r->sq_tail = (unsigned *)(base + p.sq_off.tail);
    r->sq_mask = (unsigned *)(base + p.sq_off.ring_mask);
    r->sq_array = (unsigned *)(base + p.sq_off.array);
    r->cq_head = (unsigned *)(base + p.cq_off.head);
    r->cq_tail = (unsigned *)(base + p.cq_off.tail);
    r->cq_mask = (unsigned *)(base + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(base + p.cq_off.cqes);
    r->sq_entries = p.sq_entries;
    return r;
}

int ring_add(Pump *self, Slot *slot) {
    /* Submitted now: queued, it would name the descriptor by number. */
    if (queue_recv(self->ring, slot) < 0) return -1;
    return enter(self->ring, 0, 0) < 0 ? -1 : 0;
}

static void free_slot(Slot *slot) {
    if (slot->has_retired) PyBuffer_Release(&slot->retired);
    PyMem_Free(slot);
}

void ring_remove(Pump *self, Slot *slot) {
    Ring *r = self->ring;
    slot->dead = 1;
    if (!slot->recv_inflight && !slot->send_inflight) {
        free_slot(slot);
        return;
    }
    if (slot->recv_inflight)
        queue_simple(r, IORING_OP_ASYNC_CANCEL, -1, TAG(slot, TAG_RECV), TAG(NULL, TAG_CANCEL));
    enter(r, 0, 0);
    slot->next_dead = r->dead;
    r->dead = slot;
}

void ring_sweep(Pump *self) {
    Ring *r = self->ring;
    if (r == NULL || !r->sweep) return;
    r->sweep = 0;
    for (Slot **link = &r->dead; *link != NULL;) {
        Slot *slot = *link;
        if (!slot->recv_inflight && !slot->send_inflight) {
            *link = slot->next_dead;
            free_slot(slot);
        } else {
            link = &slot->next_dead;
        }
    }
    for (int fd = 0; fd < self->nslots; fd++) {
        Slot *slot = self->slots[fd];
        if (slot != NULL && slot->has_retired && !slot->send_inflight) {
            PyBuffer_Release(&slot->retired);
            slot->has_retired = 0;
        }
    }
}

int ring_poll(Pump *self) {
    Ring *r = self->ring;
    if (enter(r, 0, 0) < 0 || reap(self) < 0) return -1;
    return unsubmitted(r) && enter(r, 0, 0) < 0 ? -1 : 0;
}

int ring_wait(Pump *self, int epfd, double timeout, double spin, int budget) {
    Ring *r = self->ring;
    r->handled = 0;
    r->epfd_ready = 0;
    if (epfd >= 0 && !r->epfd_polled
            && queue_simple(r, IORING_OP_POLL_ADD, epfd, 0, TAG(NULL, TAG_EPFD)) == 0)
        r->epfd_polled = 1;
    double deadline = timeout < 0 ? -1.0 : lockstep_monotonic() + timeout;
    double idle_since = 0.0;
    int failed = enter(r, 0, 0);  /* 1: a signal came, so back to Python */
    while (!failed) {
        int before = r->handled;
        if (reap(self) < 0) {
            failed = -1;
            break;
        }
        if (self->nqueue > 0 || r->epfd_ready || r->handled >= budget) break;
        double now = lockstep_monotonic();
        if (deadline >= 0 && now >= deadline) break;
        if (r->handled > before || unsubmitted(r)) {
            if (idle_since != 0.0) self->misses = 0;
            idle_since = 0.0;
            failed = enter(r, 0, 0);
        } else if (timeout != 0 && spin > 0 && lockstep_spin_more(self, &idle_since, spin)) {
            failed = enter(r, 0, 0);  /* busy-poll: as the epoll pump's */
        } else {
            idle_since = 0.0;
            failed = enter(r, 1, deadline < 0 ? -1.0 : deadline - now);
        }
    }
    if (unsubmitted(r) && enter(r, 0, 0) < 0) failed = -1;
    if (self->nqueue > 0 && !r->signalled) {
        uint64_t one = 1;
        if (write(r->efd, &one, sizeof(one)) == sizeof(one)) r->signalled = 1;
    }
    return failed < 0 ? -1 : 0;
}

void ring_clear(Ring *ring) {
    uint64_t count;
    if (ring->signalled && read(ring->efd, &count, sizeof(count)) >= 0) ring->signalled = 0;
}

void ring_close(Pump *self) {
    Ring *r = self->ring;
    if (r == NULL) return;
    struct io_uring_sqe *sqe = sqe_get(r);
    if (sqe != NULL) {  /* cancel everything: receives, sends, the epoll poll */
        sqe->opcode = IORING_OP_ASYNC_CANCEL;
        sqe->fd = -1;
        sqe->cancel_flags = IORING_ASYNC_CANCEL_ALL | IORING_ASYNC_CANCEL_ANY;
        sqe->user_data = TAG(NULL, TAG_CANCEL);
        sqe_push(r);
    }
    double deadline = lockstep_monotonic() + CLOSE_WAIT;
    while (r->dead != NULL || r->epfd_polled) {
        double left = deadline - lockstep_monotonic();
        if (left <= 0 || enter(r, 1, left) < 0 || reap(self) < 0) break;
        r->sweep = 1;
        ring_sweep(self);
    }
    /* What is still in flight after CLOSE_WAIT (never seen) is left
     * allocated: the kernel may still write it. */
    for (int i = 0; i < self->nqueue; i++) free(self->queue[i].data);
    self->nqueue = 0;
    self->ring = NULL;
    unmap(r);
}

#endif
