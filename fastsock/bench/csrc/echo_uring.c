/*
 * echo_uring: the plain C completion server that `fastsock bench` uses as the
 * limit for the io_uring model.
 *
 *   echo_uring --addr tcp:HOST:PORT|unix:PATH|unix:@NAME
 *              [--recv auto|multishot|single]
 *
 * One ring (SINGLE_ISSUER|DEFER_TASKRUN where the kernel has them),
 * multishot accept, and per connection one of two ways to receive, chosen by
 * what it sends (--recv auto, the default; the others force one way for
 * every connection, to measure them):
 *
 *   multishot  a multishot recv from a ring of 16 KiB provided buffers
 *              shared by all connections: no memory per idle connection, and
 *              the cheapest per message when messages are small;
 *   single     a single-shot recv into the connection's own 64 KiB buffer,
 *              then a send of what arrived linked with the next recv (one
 *              submission, no completion for a send that succeeds): the
 *              cheapest for bulk data, whose bytes stay in one buffer that
 *              is still in the cache when the next message comes.
 *
 * A connection starts with multishot and changes to single when a recv
 * fills a whole provided buffer; after 8 small recvs in a row it goes back
 * and frees its buffer.  A kernel without multishot recv (before 6.0) gets
 * single for every connection.  bench/README.md has the measurements
 * behind all this, and the candidates that lost (recv bundles,
 * incrementally consumed buffers, larger provided buffers).
 *
 * Bytes go out straight from the buffer they arrived in (no copy), one send
 * in flight per connection: two sends on one stream socket may complete out
 * of order when the first has to wait for space.  What arrives meanwhile
 * queues and goes out as one SENDMSG when the send in flight is done.  A
 * provided buffer goes back to the ring as soon as its bytes are sent.
 *
 * Prints "READY <address>" once listening, or "SKIP <reason>" and exits 3
 * when this kernel or sandbox does not allow what it needs.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common.h"

#define ENTRIES 4096
#define BGID 0
#define NBUFS 4096                   /* provided buffers, a power of two */
#define BUFSZ 16384
#define OWNSZ 65536                  /* a single-mode connection's buffer */
#define SMALL (BUFSZ / 4)            /* a recv this short counts as small */
#define SMALL_RUN 8                  /* small recvs in a row: back to multishot */
#define IOV_MAX_SEND 64              /* pieces gathered per SENDMSG */
#define TARGET_MIN 4

/* user_data: a connection pointer (calloc'ed, so 16-byte aligned) | op.
 * Completions tagged 0 need no handling. */
enum { OP_NONE, OP_ACCEPT, OP_RECV_MULTI, OP_RECV_ONE, OP_SEND, OP_SEND_LINKED };
enum policy { P_AUTO, P_MULTISHOT, P_SINGLE };
static const char *policy_names[] = {"auto", "multishot", "single"};

/* Bytes waiting to be sent: part of a provided buffer (bid >= 0) or of the
 * connection's own buffer (bid -1).  Linked by index in one pool. */
struct piece {
    unsigned char *p;
    unsigned len;
    int bid;
    int next;
};

struct conn {
    int fd;
    int ops;                         /* completions still due that point at c */
    unsigned char single;            /* receives into own[] */
    unsigned char closing, waiting_bufs;
    unsigned char eof;               /* the peer is done sending: close once
                                        everything it sent is echoed */
    unsigned char to_single;         /* multishot cancelled, single next */
    unsigned char to_multi;          /* back to multishot once own[] is sent */
    unsigned char linked;            /* the send in flight is echo_linked's */
    unsigned char small_run;
    int qhead, qtail;                /* pieces queued to send, in order */
    unsigned sending;                /* bytes of the send in flight, 0: none */
    unsigned char *own;
    struct msghdr *msg;              /* gathered sends, made on first use */
    struct conn *next_waiting;
};

static struct io_uring ring;
static int lfd;
static enum policy policy = P_AUTO;

static struct io_uring_buf_ring *br;
static unsigned char *bufs;
static struct conn *waiting;         /* multishot recvs stopped by ENOBUFS */

/*
 * How many free buffers sit in the ring.  The kernel takes buffers in ring
 * order, so a ring holding every free buffer cycles through the whole pool
 * and each recv lands in memory that left the cache long ago: at 1 x 64 KiB
 * (Unix) the copy into the buffer took 8.6 us per request instead of 3.6,
 * at 50 x 64 B three times as long as into a buffer of the connection's
 * own.  So the ring holds only `target` buffers, topped up before each
 * submit from a stack of returned ones, most recent first; `target` doubles
 * whenever a recv finds the ring empty and halves when half of it went
 * unused for 256 submits in a row.
 */
static unsigned spare[NBUFS], nspare;
static unsigned level;               /* buffers in the ring */
static unsigned target = TARGET_MIN * 4;
static unsigned low_water = ~0u, refills;
static int starved;                  /* a recv found the ring empty */

static struct piece *pieces;
static int npieces, pfree = -1;

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

static uint64_t tag(struct conn *c, int op)
{
    return (uint64_t)(uintptr_t)c | (uint64_t)op;
}

/* ---- buffers and pieces -------------------------------------------------- */

/* Before each submit: size the ring for what the last batches needed and
 * top it up from the spare stack, hottest first. */
static void refill(void)
{
    if (starved) {
        target = target * 2 < NBUFS ? target * 2 : NBUFS;
        starved = 0;
        low_water = ~0u;
        refills = 0;
    } else {
        if (level < low_water)
            low_water = level;
        if (++refills == 256) {
            if (low_water > target / 2 && target / 2 >= TARGET_MIN)
                target /= 2;
            low_water = ~0u;
            refills = 0;
        }
    }
    unsigned n = 0;
    while (level + n < target && nspare) {
        unsigned bid = spare[--nspare];
        io_uring_buf_ring_add(br, bufs + (size_t)bid * BUFSZ, BUFSZ, bid,
                              io_uring_buf_ring_mask(NBUFS), (int)n);
        n++;
    }
    if (n) {
        io_uring_buf_ring_advance(br, (int)n);
        level += n;
    }
}

static int piece_new(void)
{
    if (pfree < 0) {
        int n = npieces ? npieces * 2 : 1024;
        pieces = realloc(pieces, (size_t)n * sizeof *pieces);
        if (!pieces)
            skip("realloc", ENOMEM);
        for (int i = n - 1; i >= npieces; i--) {
            pieces[i].next = pfree;
            pfree = i;
        }
        npieces = n;
    }
    int i = pfree;
    pfree = pieces[i].next;
    return i;
}

/* The first queued piece is sent: its buffer is free again. */
static void piece_pop(struct conn *c)
{
    int i = c->qhead;
    c->qhead = pieces[i].next;
    if (c->qhead < 0)
        c->qtail = -1;
    if (pieces[i].bid >= 0)
        spare[nspare++] = (unsigned)pieces[i].bid;
    pieces[i].next = pfree;
    pfree = i;
}

static void enqueue(struct conn *c, unsigned char *p, unsigned n, int bid)
{
    int i = piece_new();
    pieces[i] = (struct piece){p, n, bid, -1};
    if (c->qtail >= 0)
        pieces[c->qtail].next = i;
    else
        c->qhead = i;
    c->qtail = i;
}

/* ---- operations ----------------------------------------------------------- */

static void arm_accept(void)
{
    struct io_uring_sqe *sqe = sqe_get();
    io_uring_prep_multishot_accept(sqe, lfd, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, tag(NULL, OP_ACCEPT));
}

static void arm_recv(struct conn *c)
{
    struct io_uring_sqe *sqe = sqe_get();
    if (c->single) {
        io_uring_prep_recv(sqe, c->fd, c->own, OWNSZ, 0);
        io_uring_sqe_set_data64(sqe, tag(c, OP_RECV_ONE));
    } else {
        io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = BGID;
        io_uring_sqe_set_data64(sqe, tag(c, OP_RECV_MULTI));
    }
    c->ops++;
}

/* Send what is queued: one SEND for one piece, else one SENDMSG. */
static void send_queued(struct conn *c)
{
    if (c->sending || c->qhead < 0 || c->closing)
        return;
    struct io_uring_sqe *sqe = sqe_get();
    struct piece *first = &pieces[c->qhead];
    /* MSG_WAITALL: the kernel finishes a short send itself. */
    int flags = MSG_NOSIGNAL | MSG_WAITALL;
    if (first->next < 0) {
        io_uring_prep_send(sqe, c->fd, first->p, first->len, flags);
        c->sending = first->len;
    } else {
        if (!c->msg) {
            c->msg = calloc(1, sizeof *c->msg + IOV_MAX_SEND * sizeof(struct iovec));
            if (!c->msg)
                skip("calloc", ENOMEM);
            c->msg->msg_iov = (struct iovec *)(c->msg + 1);
        }
        struct iovec *iov = c->msg->msg_iov;
        unsigned n = 0, total = 0;
        for (int i = c->qhead; i >= 0 && n < IOV_MAX_SEND; i = pieces[i].next) {
            iov[n].iov_base = pieces[i].p;
            iov[n].iov_len = pieces[i].len;
            total += pieces[i].len;
            n++;
        }
        c->msg->msg_iovlen = n;
        io_uring_prep_sendmsg(sqe, c->fd, c->msg, flags);
        c->sending = total;
    }
    io_uring_sqe_set_data64(sqe, tag(c, OP_SEND));
    c->ops++;
}

/* single, nothing queued: the reply and the next recv in one submission,
 * linked so the recv cannot overwrite own[] before the send is done with
 * it.  The send posts no completion when it succeeds.  When it fails (or
 * is short, which MSG_WAITALL makes a failure) the kernel cancels the recv
 * and, since the send asked to skip its success, posts no completion for
 * the recv either: the send's completion then stands for both. */
static void echo_linked(struct conn *c, unsigned n)
{
    struct io_uring_sqe *sqe = sqe_get();
    io_uring_prep_send(sqe, c->fd, c->own, n, MSG_NOSIGNAL | MSG_WAITALL);
    io_uring_sqe_set_data64(sqe, tag(c, OP_SEND_LINKED));
    sqe->flags |= IOSQE_IO_LINK | IOSQE_CQE_SKIP_SUCCESS;
    c->sending = n;                  /* until the linked recv completes */
    c->linked = 1;
    arm_recv(c);
}

/* ---- connection lifecycle ------------------------------------------------- */

/* Frees c once no completion that points at it is due any more. */
static void maybe_free(struct conn *c)
{
    if (!c->closing || c->ops || c->waiting_bufs)
        return;
    while (c->qhead >= 0)
        piece_pop(c);
    close(c->fd);
    free(c->own);
    free(c->msg);
    free(c);
}

static void start_close(struct conn *c)
{
    if (!c->closing) {
        c->closing = 1;
        /* Ends an armed recv (its last completion says 0) and a send stuck
         * waiting for space; close() alone would not, since the ring holds
         * its own reference to the socket. */
        if (c->ops)
            shutdown(c->fd, SHUT_RDWR);
    }
    maybe_free(c);
}

/* The peer half-closed: echo what is still queued, then close. */
static void end_of_input(struct conn *c)
{
    c->eof = 1;
    if (c->qhead < 0 && !c->sending)
        start_close(c);
}

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

static void become_single(struct conn *c)
{
    c->to_single = 0;
    c->small_run = 0;
    if (!c->own && !(c->own = malloc(OWNSZ))) {
        arm_recv(c);                 /* no memory: stay with multishot */
        return;
    }
    c->single = 1;
    arm_recv(c);
}

/* ---- completions ----------------------------------------------------------- */

static void on_accept(int res, unsigned flags)
{
    if (res >= 0) {
        struct conn *c = calloc(1, sizeof *c);
        if (!c) {
            close(res);
        } else {
            c->fd = res;
            c->qhead = c->qtail = -1;
            if (policy == P_SINGLE)
                become_single(c);
            else
                arm_recv(c);
        }
    }
    if (!(flags & IORING_CQE_F_MORE))
        arm_accept();                /* multishot ended (error or full CQ) */
}

static void on_recv_multi(struct conn *c, int res, unsigned flags)
{
    if (res > 0) {
        unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;
        level--;
        if (c->closing) {
            spare[nspare++] = bid;
        } else {
            enqueue(c, bufs + (size_t)bid * BUFSZ, (unsigned)res, (int)bid);
            send_queued(c);
            if (res == BUFSZ && policy == P_AUTO && !c->to_single &&
                (flags & IORING_CQE_F_MORE)) {
                /* Bulk data: stop the multishot and receive into own[]. */
                struct io_uring_sqe *sqe = sqe_get();
                io_uring_prep_cancel64(sqe, tag(c, OP_RECV_MULTI), 0);
                io_uring_sqe_set_data64(sqe, tag(NULL, OP_NONE));
                c->to_single = 1;
            }
        }
    }
    if (flags & IORING_CQE_F_MORE)
        return;
    c->ops--;
    if (res == -EINVAL && policy != P_SINGLE) {
        /* A kernel without multishot recv (before 6.0): every connection
         * receives into its own buffer from now on. */
        policy = P_SINGLE;
        if (!c->closing) {
            become_single(c);
            return;
        }
    }
    if (c->closing) {
        maybe_free(c);
    } else if (res == 0) {
        end_of_input(c);
    } else if (res < 0 && res != -ENOBUFS && res != -ECANCELED) {
        start_close(c);
    } else if (c->to_single || (res == BUFSZ && policy == P_AUTO)) {
        become_single(c);
    } else if (res == -ENOBUFS) {
        /* Every buffer is queued for sending somewhere; resume when the
         * ring has some again.  The bytes wait in the socket meanwhile. */
        c->waiting_bufs = 1;
        c->next_waiting = waiting;
        waiting = c;
        starved = 1;
    } else {
        arm_recv(c);                 /* multishot stopped, e.g. CQ full */
    }
}

static void on_recv_one(struct conn *c, int res)
{
    c->ops--;
    if (c->linked) {                 /* the send linked before it is done */
        c->linked = 0;
        c->sending = 0;
    }
    if (res == 0 && !c->closing) {
        end_of_input(c);
        return;
    }
    if (res < 0 || c->closing) {
        start_close(c);
        return;
    }
    c->small_run = res < SMALL ? c->small_run + 1 : 0;
    if (c->small_run >= SMALL_RUN && policy == P_AUTO)
        c->to_multi = 1;
    if (c->qhead < 0 && !c->sending && !c->to_multi) {
        echo_linked(c, (unsigned)res);
        return;
    }
    /* Behind other bytes (or on the way back to multishot): queue it; the
     * next recv goes in once own[] is sent. */
    enqueue(c, c->own, (unsigned)res, -1);
    send_queued(c);
}

/* Only a linked send that failed completes: its recv is gone too. */
static void on_send_linked(struct conn *c)
{
    c->linked = 0;
    c->sending = 0;
    c->ops--;
    start_close(c);
}

static void on_send(struct conn *c, int res)
{
    c->ops--;
    c->sending = 0;
    if (res < 0) {
        start_close(c);
        return;
    }
    int own_sent = 0;
    unsigned done = (unsigned)res;
    while (done && c->qhead >= 0) {
        struct piece *pc = &pieces[c->qhead];
        if (done < pc->len) {        /* short send: the rest goes next */
            pc->p += done;
            pc->len -= done;
            break;
        }
        done -= pc->len;
        own_sent |= pc->bid < 0;
        piece_pop(c);
    }
    if (c->closing) {
        maybe_free(c);
        return;
    }
    send_queued(c);
    if (c->eof) {
        if (c->qhead < 0 && !c->sending)
            start_close(c);
    } else if (own_sent) {
        if (c->to_multi) {
            c->to_multi = 0;
            c->single = 0;
            free(c->own);
            c->own = NULL;
        }
        arm_recv(c);
    }
}

/* ---- setup ------------------------------------------------------------------ */

static void setup_buffers(void)
{
    int err;
    br = fs_setup_buf_ring(&ring, NBUFS, BGID, 0, &err);
    if (!br)
        skip("io_uring_register_buf_ring (kernel 5.19+)", -err);
    bufs = malloc((size_t)NBUFS * BUFSZ);
    if (!bufs)
        skip("malloc", ENOMEM);
    /* Touch the pool now: a long-running server has, and otherwise the idle
     * memory workload would charge first-touch pages to new connections. */
    memset(bufs, 0xa5, (size_t)NBUFS * BUFSZ);   /* not 0: gcc turns that into calloc */
    for (unsigned i = NBUFS; i-- > 0;)
        spare[nspare++] = i;
    refill();
}

int main(int argc, char **argv)
{
    const char *addr = NULL, *recv = "auto";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--addr"))
            addr = argv[i + 1];
        else if (!strcmp(argv[i], "--recv"))
            recv = argv[i + 1];
        else if (!strcmp(argv[i], "--file")) {
            printf("SKIP the C io_uring server has no sendfile mode\n");
            return 3;
        }
    }
    int known = 0;
    for (int m = 0; m < 3; m++)
        if (!strcmp(recv, policy_names[m])) {
            policy = (enum policy)m;
            known = 1;
        }
    if (!addr || !known) {
        fprintf(stderr, "usage: echo_uring --addr ADDR [--recv auto|multishot|single]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    fs_raise_nofile();

    struct io_uring_params p = {0};
    int rc = fs_uring_init(ENTRIES, &ring, &p, NULL, 0);
    if (rc < 0)
        skip("io_uring_queue_init", -rc);
    if (!(p.features & IORING_FEAT_CQE_SKIP))
        skip("io_uring without IOSQE_CQE_SKIP_SUCCESS (kernel 5.17+)", ENOSYS);
    setup_buffers();

    char shown[300];
    /* Deep backlog: the load generator opens hundreds of connections at
     * once and a dropped SYN costs a 1 s retransmit. */
    lfd = fs_listen_spec(addr, 0, 4096, shown, sizeof shown);
    if (lfd < 0) {
        fprintf(stderr, "echo_uring: %s: %s\n", addr, strerror(-lfd));
        return 2;
    }
    if (!strncmp(shown, "tcp:", 4)) {
        /* Accepted sockets inherit TCP_NODELAY from the listener: one
         * setsockopt here instead of one per connection. */
        int one = 1;
        setsockopt(lfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    arm_accept();
    io_uring_submit(&ring);
    printf("READY %s\n", shown);
    fflush(stdout);

    for (;;) {
        refill();
        if (waiting && level)
            rearm_waiting();
        rc = io_uring_submit_and_wait(&ring, 1);
        if (rc < 0 && rc != -EINTR && rc != -EBUSY) {
            fprintf(stderr, "echo_uring: submit_and_wait: %s\n", strerror(-rc));
            return 2;
        }
        struct io_uring_cqe *cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&ring, head, cqe) {
            seen++;
            uint64_t ud = cqe->user_data;
            struct conn *c = (struct conn *)(uintptr_t)(ud & ~(uint64_t)7);
            switch (ud & 7) {
            case OP_ACCEPT:     on_accept(cqe->res, cqe->flags); break;
            case OP_RECV_MULTI: on_recv_multi(c, cqe->res, cqe->flags); break;
            case OP_RECV_ONE:   on_recv_one(c, cqe->res); break;
            case OP_SEND:       on_send(c, cqe->res); break;
            case OP_SEND_LINKED: on_send_linked(c); break;
            default:            break;
            }
        }
        io_uring_cq_advance(&ring, seen);
    }
}
