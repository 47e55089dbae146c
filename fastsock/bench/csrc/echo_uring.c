/*
 * echo_uring: the plain C completion server that `fastsock bench` uses as the
 * limit for the io_uring model.
 *
 *   echo_uring --addr tcp:HOST:PORT|unix:PATH|unix:@NAME
 *
 * One ring, SINGLE_ISSUER|DEFER_TASKRUN when the kernel has them, multishot
 * accept, multishot recv into a provided buffer ring, and one send in flight
 * per connection (two sends on one socket may complete out of order when the
 * first one has to wait for space, so later buffers queue behind it).
 * A buffer goes back to the ring as soon as its bytes are sent.
 *
 * liburing 2.3 has no io_uring_setup_buf_ring(): the ring memory is mmap'ed
 * here and registered with io_uring_register_buf_ring().
 *
 * Prints "READY <address>" once listening, or "SKIP <reason>" and exits 3
 * when this kernel or sandbox does not allow what it needs.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common.h"

#define ENTRIES 4096
#define NBUFS 4096                   /* power of two, as the ring requires */
#define BUFSZ 16384
#define BGID 0

enum { OP_ACCEPT = 1, OP_RECV = 2, OP_SEND = 3 };

struct conn {
    int fd;
    int recv_armed, send_inflight, closing, waiting_bufs;
    int head, tail;                  /* queued buffer ids, linked by bnext */
    struct conn *next_waiting;
};

static struct io_uring ring;
static struct io_uring_buf_ring *br;
static unsigned char *bufs;
static int bnext[NBUFS];
static unsigned blen[NBUFS], boff[NBUFS];
static int lfd;
static struct conn *waiting;         /* connections stopped by ENOBUFS */

static void skip(const char *why, int err)
{
    printf("SKIP %s: %s\n", why, strerror(err));
    fflush(stdout);
    exit(3);
}

static struct io_uring_sqe *sqe_get(void)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
    if (!sqe) {                      /* SQ full: push it out and retry */
        io_uring_submit(&ring);
        sqe = io_uring_get_sqe(&ring);
    }
    return sqe;
}

static void *tag(struct conn *c, int op)
{
    return (void *)((uintptr_t)c | (uintptr_t)op);
}

static void arm_accept(void)
{
    struct io_uring_sqe *sqe = sqe_get();
    io_uring_prep_multishot_accept(sqe, lfd, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data(sqe, tag(NULL, OP_ACCEPT));
}

static void arm_recv(struct conn *c)
{
    struct io_uring_sqe *sqe = sqe_get();
    io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = BGID;
    io_uring_sqe_set_data(sqe, tag(c, OP_RECV));
    c->recv_armed = 1;
}

static void send_head(struct conn *c)
{
    int bid = c->head;
    struct io_uring_sqe *sqe = sqe_get();
    io_uring_prep_send(sqe, c->fd, bufs + (size_t)bid * BUFSZ + boff[bid],
                       blen[bid] - boff[bid], MSG_NOSIGNAL);
    io_uring_sqe_set_data(sqe, tag(c, OP_SEND));
    c->send_inflight = 1;
}

static void buf_return(int bid)
{
    io_uring_buf_ring_add(br, bufs + (size_t)bid * BUFSZ, BUFSZ, bid,
                          io_uring_buf_ring_mask(NBUFS), 0);
    io_uring_buf_ring_advance(br, 1);
}

static void maybe_free(struct conn *c);

static void rearm_waiting(void)
{
    while (waiting) {
        struct conn *c = waiting;
        waiting = c->next_waiting;
        c->waiting_bufs = 0;
        if (c->closing)
            maybe_free(c);
        else
            arm_recv(c);
    }
}

/* Frees c once no SQE points at it any more. */
static void maybe_free(struct conn *c)
{
    if (!c->closing || c->recv_armed || c->send_inflight || c->waiting_bufs)
        return;
    while (c->head >= 0) {
        int bid = c->head;
        c->head = bnext[bid];
        buf_return(bid);
    }
    close(c->fd);
    free(c);
}

static void start_close(struct conn *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    if (c->recv_armed) {
        /* The multishot recv still points at c: cancel it and free c when
         * its final CQE arrives. */
        struct io_uring_sqe *sqe = sqe_get();
        io_uring_prep_cancel(sqe, tag(c, OP_RECV), 0);
        io_uring_sqe_set_data(sqe, NULL);
    }
}

static void on_accept(int res, unsigned flags)
{
    if (res >= 0) {
        int one = 1;
        setsockopt(res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        c->fd = res;
        c->head = c->tail = -1;
        arm_recv(c);
    }
    if (!(flags & IORING_CQE_F_MORE))
        arm_accept();                /* multishot ended (error or full CQ) */
}

static void on_recv(struct conn *c, int res, unsigned flags)
{
    if (res > 0) {
        int bid = (int)(flags >> IORING_CQE_BUFFER_SHIFT);
        blen[bid] = (unsigned)res;
        boff[bid] = 0;
        bnext[bid] = -1;
        if (c->closing) {
            buf_return(bid);
        } else {
            if (c->tail >= 0)
                bnext[c->tail] = bid;
            else
                c->head = bid;
            c->tail = bid;
            if (!c->send_inflight)
                send_head(c);
        }
    }
    if (flags & IORING_CQE_F_MORE)
        return;
    c->recv_armed = 0;
    if (res == -ENOBUFS && !c->closing) {
        /* Every buffer is queued for sending somewhere; resume when one
         * comes back.  The bytes wait in the socket meanwhile. */
        c->waiting_bufs = 1;
        c->next_waiting = waiting;
        waiting = c;
    } else if (res > 0 && !c->closing) {
        arm_recv(c);                 /* multishot stopped, e.g. CQ full */
    } else {
        start_close(c);              /* EOF, error or cancellation */
        maybe_free(c);
    }
}

static void on_send(struct conn *c, int res)
{
    c->send_inflight = 0;
    if (res < 0) {
        start_close(c);
        maybe_free(c);
        return;
    }
    int bid = c->head;
    boff[bid] += (unsigned)res;
    if (boff[bid] < blen[bid] && !c->closing) {
        send_head(c);                /* short send: the rest, in order */
        return;
    }
    c->head = bnext[bid];
    if (c->head < 0)
        c->tail = -1;
    buf_return(bid);
    rearm_waiting();
    if (c->closing) {
        maybe_free(c);
        return;
    }
    if (c->head >= 0)
        send_head(c);
}

static int setup_ring(void)
{
    /* Newest flags first; older kernels reject them with EINVAL. */
    unsigned tries[] = {
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
        IORING_SETUP_COOP_TASKRUN, 0};
    int rc = -EINVAL;
    for (unsigned i = 0; i < sizeof tries / sizeof tries[0]; i++) {
        struct io_uring_params p = {.flags = tries[i]};
        rc = io_uring_queue_init_params(ENTRIES, &ring, &p);
        if (rc != -EINVAL)
            break;
    }
    return rc;
}

int main(int argc, char **argv)
{
    const char *addr = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--addr"))
            addr = argv[i + 1];
        else if (!strcmp(argv[i], "--file")) {
            printf("SKIP the C io_uring server has no sendfile mode\n");
            return 3;
        }
    }
    if (!addr) {
        fprintf(stderr, "usage: echo_uring --addr ADDR\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    fs_raise_nofile();

    int rc = setup_ring();
    if (rc < 0)
        skip("io_uring_queue_init", -rc);

    size_t ring_bytes = NBUFS * sizeof(struct io_uring_buf);
    br = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE,
              MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (br == MAP_FAILED)
        skip("mmap", errno);
    struct io_uring_buf_reg reg = {
        .ring_addr = (uintptr_t)br, .ring_entries = NBUFS, .bgid = BGID};
    rc = io_uring_register_buf_ring(&ring, &reg, 0);
    if (rc < 0)
        skip("io_uring_register_buf_ring (kernel 5.19+)", -rc);
    bufs = malloc((size_t)NBUFS * BUFSZ);
    if (!bufs)
        skip("malloc", ENOMEM);
    /* Touch the pool now: a long-running server has, and otherwise the idle
     * memory workload would charge first-touch pages to new connections. */
    memset(bufs, 0xa5, (size_t)NBUFS * BUFSZ);   /* not 0: gcc turns that into calloc */
    io_uring_buf_ring_init(br);
    for (int i = 0; i < NBUFS; i++)
        io_uring_buf_ring_add(br, bufs + (size_t)i * BUFSZ, BUFSZ, i,
                              io_uring_buf_ring_mask(NBUFS), i);
    io_uring_buf_ring_advance(br, NBUFS);

    char shown[300];
    /* Deep backlog: the load generator opens hundreds of connections at
     * once and a dropped SYN costs a 1 s retransmit. */
    lfd = fs_listen_spec(addr, 0, 4096, shown, sizeof shown);
    if (lfd < 0) {
        fprintf(stderr, "echo_uring: %s: %s\n", addr, strerror(-lfd));
        return 2;
    }
    arm_accept();
    io_uring_submit(&ring);
    printf("READY %s\n", shown);
    fflush(stdout);

    for (;;) {
        rc = io_uring_submit_and_wait(&ring, 1);
        if (rc < 0 && rc != -EINTR && rc != -EBUSY) {
            fprintf(stderr, "echo_uring: submit_and_wait: %s\n", strerror(-rc));
            return 2;
        }
        struct io_uring_cqe *cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&ring, head, cqe) {
            seen++;
            uintptr_t ud = (uintptr_t)io_uring_cqe_get_data(cqe);
            struct conn *c = (struct conn *)(ud & ~(uintptr_t)7);
            switch (ud & 7) {
            case OP_ACCEPT: on_accept(cqe->res, cqe->flags); break;
            case OP_RECV:   on_recv(c, cqe->res, cqe->flags); break;
            case OP_SEND:   on_send(c, cqe->res); break;
            default:        break;   /* cancel requests */
            }
        }
        io_uring_cq_advance(&ring, seen);
    }
}
