/*
 * C helpers written once for every C part of fastsock: the extension's ring
 * module (fastsock/ring.pyx: the io_uring setup-flag ladder, provided-buffer
 * rings) and the bench's C programs (loadgen, echo_epoll, echo_uring: all of
 * it, the address grammar and the file descriptor limit too).  common.c is
 * compiled as its own translation unit and linked into each of them.
 *
 * Plain functions, no global state, errors returned as -errno: nothing here
 * prints or exits, so the callers decide what a failure means (a server
 * prints SKIP, the load generator falls back to epoll).
 *
 * The io_uring part is compiled only with -DHAVE_LIBURING.
 */
#ifndef FASTSOCK_COMMON_H
#define FASTSOCK_COMMON_H

#include <stddef.h>
#include <sys/socket.h>

/* ---- addresses ---------------------------------------------------------
 *
 *   tcp:HOST:PORT   HOST a name, an IPv4 address or an IPv6 address (with
 *                   or without [brackets]); PORT may be 0 when listening
 *   udp:HOST:PORT   the same, datagrams
 *   unix:/path      a filesystem Unix socket
 *   unix:@name      a Linux abstract Unix socket (no trailing NUL)
 */
struct fs_addr {
    struct sockaddr_storage ss;
    socklen_t len;
    int type;                        /* SOCK_STREAM or SOCK_DGRAM */
};

/* fs_addr_parse flags */
#define FS_ADDR_PASSIVE 1            /* for bind: an empty HOST is any address */

/* 0, or -EINVAL (not the grammar above), -ENAMETOOLONG (unix path too long),
 * -EADDRNOTAVAIL (HOST or PORT does not resolve), -ENOMEM. */
int fs_addr_parse(const char *spec, int flags, struct fs_addr *out);

/* The address bound to fd, written in the grammar above (a listener on
 * port 0 shows its real port).  0 or -errno. */
int fs_addr_local(int fd, char *buf, size_t buflen);

/* A listening stream socket: SOCK_CLOEXEC | sock_flags (e.g. SOCK_NONBLOCK),
 * SO_REUSEADDR for TCP, a stale filesystem socket replaced.  fd or -errno. */
int fs_listen(const struct fs_addr *a, int sock_flags, int backlog);

/* fs_addr_parse (passive) + fs_listen + fs_addr_local in one: what a server
 * does with its --addr.  The listening fd, or -errno. */
int fs_listen_spec(const char *spec, int sock_flags, int backlog,
                   char *shown, size_t shownlen);

/* Soft RLIMIT_NOFILE raised to the hard limit.  The new soft limit, or
 * -errno. */
long fs_raise_nofile(void);

#ifdef HAVE_LIBURING
#include <liburing.h>

/*
 * io_uring_queue_init_params, best setup flags first.  Each rung in turn
 * is OR'ed into p->flags as the caller passed them (e.g. CQSIZE, with
 * p->cq_entries; R_DISABLED, for a ring enabled later by the thread that
 * will submit); a kernel that refuses a flag says EINVAL and the next rung
 * is tried.  rungs == NULL means FS_URING_LADDER.  On success p holds what
 * the kernel accepted (p->flags, p->features).  0 or -errno.
 */
extern const unsigned FS_URING_LADDER[3];
int fs_uring_init(unsigned entries, struct io_uring *ring,
                  struct io_uring_params *p, const unsigned *rungs,
                  unsigned nrungs);

/* Flags of a provided-buffer ring registration (kernel uapi values; liburing
 * 2.3 names neither). */
#define FS_PBUF_RING_INC 2u          /* IOU_PBUF_RING_INC, kernel 6.12+ */

/*
 * A provided-buffer ring of nentries (a power of two, at most 32768) for
 * group bgid, registered with `flags`; the shape of liburing 2.4's
 * io_uring_setup_buf_ring().  The ring is empty: add buffers with
 * io_uring_buf_ring_add() and io_uring_buf_ring_advance().  NULL with
 * *err = -errno on failure; a kernel without a flag says -EINVAL.
 */
struct io_uring_buf_ring *fs_setup_buf_ring(struct io_uring *ring,
                                            unsigned nentries, int bgid,
                                            unsigned flags, int *err);
/* Unregister and unmap.  0 or -errno. */
int fs_free_buf_ring(struct io_uring *ring, struct io_uring_buf_ring *br,
                     unsigned nentries, int bgid);
#endif /* HAVE_LIBURING */

#endif
