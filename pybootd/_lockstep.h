/*
 * pybootd._lockstep: the pump's slots and helpers. See _lockstep.c for why
 * the module exists.
 */
#ifndef PYBOOTD_LOCKSTEP_H
#define PYBOOTD_LOCKSTEP_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <sys/socket.h>
#include <sys/uio.h>

#define OP_DATA 3             /* RFC 1350 section 5 */
#define OP_ACK 4

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
} Slot;

typedef struct {
    int fd;
    ssize_t len;
    char *data;
    struct sockaddr_storage addr;
    socklen_t addrlen;
} Handback;

typedef struct {
    PyObject_HEAD
    int epfd;                  /* -1 once closed */
    Slot **slots;              /* indexed by file descriptor */
    int nslots, active;
    char *buffer;              /* RECV_MAX bytes */
    int spin_misses, spin_probe; /* busy-poll adaptation (tftp_pump.py's constants) */
    int misses, waits;
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

#endif
