/*
 * pybootd._lockstep: what the epoll pump (_lockstep.c) and the io_uring one
 * (_lockstep_ring.c) share. See _lockstep.c for why the module exists.
 */
#ifndef PYBOOTD_LOCKSTEP_H
#define PYBOOTD_LOCKSTEP_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <sys/socket.h>
#include <sys/uio.h>

#define OP_DATA 3             /* RFC 1350 section 5 */
#define OP_ACK 4
#define RING_RECV 2048        /* a client sends ACKs and ERRORs: longer datagrams are
                               * cut, as by the lone thread (tftp_lockstep.py) */

typedef struct Slot {
    int fd;
    int armed;                 /* the pump may answer the next ACK */
    int has_chunk;             /* chunk holds a buffer (released with the GIL) */
    struct sockaddr_storage peer;
    socklen_t peerlen;
    Py_buffer chunk;           /* the blocks from `first` on */
    long long first;           /* number of the block at chunk offset 0 */
    long long sent;            /* the last block sent: its ACK is awaited */
    Py_ssize_t blksize;
    double sent_at;            /* CLOCK_MONOTONIC, as time.monotonic() */
    long long packets;         /* DATA sent here since the last take() */
    /* io_uring only: the kernel reads and writes these while an operation
     * is in flight, so a removed slot lives on (dead) until both are done. */
    int dead, recv_inflight, send_inflight;
    int send_reads_chunk;      /* the send in flight reads `chunk` */
    int has_retired;           /* a chunk replaced while a send read it */
    Py_buffer retired;
    struct Slot *next_dead;
    struct msghdr rmsg, smsg;
    struct iovec riov, siov[2];
    struct sockaddr_storage raddr;
    unsigned char shdr[4];
    unsigned char rbuf[RING_RECV];
} Slot;

typedef struct {
    int fd;
    ssize_t len;
    char *data;
    struct sockaddr_storage addr;
    socklen_t addrlen;
} Handback;

typedef struct Ring Ring;      /* _lockstep_ring.c */

typedef struct {
    PyObject_HEAD
    int epfd;                  /* epoll backend; -1 with a ring */
    Ring *ring;                /* io_uring backend; NULL with epoll */
    Slot **slots;              /* indexed by file descriptor */
    int nslots, active;
    char *buffer;              /* RECV_MAX bytes (epoll backend) */
    int spin_misses, spin_probe; /* busy-poll adaptation, as in tftp_lockstep.py */
    int misses, waits;
    Handback *queue;           /* datagrams for Python, in order (ring backend) */
    int nqueue, queue_cap;
} Pump;

double lockstep_monotonic(void);
int lockstep_same_peer(const Slot *slot, const struct sockaddr_storage *addr, socklen_t len);
/* The next block's offset and size in the chunk if this datagram is the ACK
 * of the block last sent, from the peer, and the chunk holds the next one;
 * -1 if it is Python's. */
long long lockstep_next_block(const Slot *slot, const unsigned char *data, ssize_t len,
                              const struct sockaddr_storage *addr, socklen_t addrlen,
                              long long *size);
/* After a poll that saw nothing: poll again (1) or sleep (0)? */
int lockstep_spin_more(Pump *self, double *idle_since, double spin);
int lockstep_keep(Handback *back, int fd, const char *data, ssize_t len,
                  const struct sockaddr_storage *addr, socklen_t addrlen);
void lockstep_drop_chunk(Slot *slot);  /* with the GIL */

/* The io_uring backend; each returns -1 with errno set on failure. */
int ring_available(void);
Ring *ring_open(int entries);
void ring_close(Pump *self);             /* with the GIL: waits for what is in flight */
int ring_fileno(const Ring *ring);       /* an eventfd: readable while datagrams wait */
int ring_add(Pump *self, Slot *slot);
void ring_remove(Pump *self, Slot *slot);  /* with the GIL; frees it when idle */
int ring_wait(Pump *self, int epfd, double timeout, double spin, int budget); /* no GIL */
int ring_poll(Pump *self);              /* no GIL: what is ready, no wait */
void ring_sweep(Pump *self);            /* with the GIL: release what is no longer read */
void ring_clear(Ring *ring);            /* the eventfd read */

#endif
