/*
 * echo_uring: the plain C completion server that `fastsock bench` uses as the
 * limit for the io_uring model.
 *
 *   echo_uring --addr tcp:HOST:PORT|unix:PATH|unix:@NAME
 *              [--recv multishot|bundle|inc|single] [--bufsz N] [--nbufs N]
 *
 * One ring (SINGLE_ISSUER|DEFER_TASKRUN where the kernel has them),
 * multishot accept, and one of these ways to receive:
 *
 *   multishot  a multishot recv per connection from a provided-buffer ring
 *              shared by all connections, one buffer per completion;
 *   bundle     the same with IORING_RECVSEND_BUNDLE (kernel 6.10+): one
 *              completion may carry several buffers;
 *   inc        the same from a ring of large incrementally consumed buffers
 *              (IOU_PBUF_RING_INC, kernel 6.12+): each completion takes only
 *              the bytes it needs, so small messages pack together and a
 *              large one lands contiguous;
 *   single     a single-shot recv per connection into its own buffer, then
 *              a send of what arrived, then the next recv.
 *
 * Whatever arrived is sent straight from the buffer it arrived in (no copy),
 * one send in flight per connection: two sends on one stream socket may
 * complete out of order when the first has to wait for space.  What arrives
 * meanwhile queues, and goes out as one SENDMSG when the send in flight is
 * done.  A buffer goes back to the ring as soon as its bytes are sent.
 * A kernel that refuses bundles or incremental buffers gets multishot.
 *
 * Prints "READY <address>[ | why another mode ran]" once listening, or "SKIP <reason>" and exits 3
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

/* Kernel uapi values liburing 2.3 does not name. */
#define RECVSEND_BUNDLE (1u << 4)            /* sqe->ioprio, 6.10+ */
#define FEAT_RECVSEND_BUNDLE (1u << 14)
#define CQE_F_BUF_MORE (1u << 4)             /* IOU_PBUF_RING_INC */

#define ENTRIES 4096
#define BGID 0
#define IOV_MAX_SEND 64                      /* pieces gathered per SENDMSG */

enum { OP_ACCEPT = 1, OP_RECV = 2, OP_SEND = 3 };
enum rmode { R_MULTISHOT, R_BUNDLE, R_INC, R_SINGLE };
static const char *rmode_names[] = {"multishot", "bundle", "inc", "single"};

/* Bytes waiting to be sent: a span of a provided buffer (bid >= 0) or of
 * the connection's own buffer (bid -1).  Linked by index in one pool. */
struct piece {
    unsigned char *p;
    unsigned len;
    int bid;
    int next;
};

struct conn {
    int fd;
    int ops;                         /* SQEs in flight that point at c */
    unsigned char closing, recv_armed, waiting_bufs;
    int qhead, qtail;                /* pieces queued to send, in order */
    unsigned sending;                /* bytes of the send in flight, 0: none */
    unsigned char *own;              /* single: the connection's buffer */
    struct msghdr *msg;              /* gathered sends, made on first use */
    struct conn *next_waiting;
};

static struct io_uring ring;
static int lfd, lis_tcp, can_skip_cqe;
static enum rmode mode = R_MULTISHOT;
static unsigned bufsz, nbufs;

/* The provided-buffer ring (not used by single). */
static struct io_uring_buf_ring *br;
static unsigned char *bufs;
static unsigned *refs;               /* per buffer: pieces not yet sent */
static unsigned *koff;               /* inc: where the kernel fills next */
static unsigned char *kdone;         /* inc: the kernel has moved past it */
static unsigned *slot_of;            /* bundle: ring slot a buffer was put in */
static unsigned *bid_at;             /* bundle: buffer put in each slot */
static struct conn *waiting;         /* recvs stopped by ENOBUFS */

/*
 * How many free buffers sit in the ring.  The kernel takes buffers in ring
 * order, so a ring holding every free buffer cycles through the whole pool
 * and each recv lands in memory that left the cache long ago: measured at
 * 64 KiB (1 connection, Unix), copying into the buffer took twice as long
 * with 4096 x 16 KiB in the ring as with 2 x 64 KiB, 8 us of 39 per
 * request; at 64 B, the one cache and TLB miss per recv tripled its copy.
 * So the ring holds only `target` buffers, topped up before each submit from
 * a stack of returned ones, most recent first; `target` doubles whenever a
 * recv finds the ring empty and halves when half of it went unused for a
 * while.
 */
static unsigned *spare, nspare;      /* returned buffers, hottest on top */
static unsigned level;               /* buffers in the ring */
static unsigned target, fixed_target;
static unsigned low_water = ~0u, refills;
static int starved;                  /* a recv found the ring empty */
#define TARGET_MIN 4

static const char *fallback = "";    /* why mode is not what was asked */

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

static void buf_return(unsigned bid)
{
    spare[nspare++] = bid;
}

static void buf_unref(int bid)
{
    if (bid < 0 || --refs[bid])
        return;
    if (mode == R_INC) {
        /* The kernel may still be filling the rest of it. */
        if (!kdone[bid])
            return;
        kdone[bid] = 0;
        koff[bid] = 0;
    }
    buf_return((unsigned)bid);
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

static void piece_pop(struct conn *c)
{
    int i = c->qhead;
    c->qhead = pieces[i].next;
    if (c->qhead < 0)
        c->qtail = -1;
    buf_unref(pieces[i].bid);
    pieces[i].next = pfree;
    pfree = i;
}

/* n bytes at p arrived for c: queue them behind what is queued. */
static void take(struct conn *c, unsigned char *p, unsigned n, int bid)
{
    if (bid >= 0)
        refs[bid]++;
    if (c->closing) {
        buf_unref(bid);
        return;
    }
    int t = c->qtail;
    if (t >= 0 && pieces[t].bid == bid && pieces[t].p + pieces[t].len == p) {
        pieces[t].len += n;          /* inc: right after the last piece */
        buf_unref(bid);
        return;
    }
    int i = piece_new();
    pieces[i] = (struct piece){p, n, bid, -1};
    if (t >= 0)
        pieces[t].next = i;
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
    if (mode == R_SINGLE) {
        io_uring_prep_recv(sqe, c->fd, c->own, bufsz, 0);
    } else {
        io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = BGID;
        if (mode == R_BUNDLE)
            sqe->ioprio |= RECVSEND_BUNDLE;
    }
    io_uring_sqe_set_data64(sqe, tag(c, OP_RECV));
    c->recv_armed = 1;
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

/* single: the reply to what the last recv brought, and the next recv,
 * linked so both go in with one submission and the recv cannot overwrite
 * the buffer before the send is done with it.  A send that succeeds posts
 * no completion where the kernel allows; one that fails ends the link (the
 * recv completes with -ECANCELED). */
static void single_echo(struct conn *c, unsigned n)
{
    struct io_uring_sqe *sqe = sqe_get();
    io_uring_prep_send(sqe, c->fd, c->own, n, MSG_NOSIGNAL | MSG_WAITALL);
    io_uring_sqe_set_data64(sqe, tag(c, OP_SEND));
    sqe->flags |= IOSQE_IO_LINK;
    if (can_skip_cqe)
        sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
    else
        c->ops++;
    c->sending = n;
    arm_recv(c);
}

/* ---- connection lifecycle ------------------------------------------------- */

/* Frees c once no SQE points at it any more. */
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
        /* Ends an armed multishot recv (its last completion says 0) and a
         * send stuck waiting for space; close() alone would not, since the
         * ring holds its own reference to the socket. */
        if (c->ops)
            shutdown(c->fd, SHUT_RDWR);
    }
    maybe_free(c);
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

/* Before each submit: size the ring for what the last batches needed and
 * top it up from the spare stack, hottest first. */
static void refill(void)
{
    if (fixed_target) {
        target = fixed_target;
    } else if (starved) {
        target = target * 2 < nbufs ? target * 2 : nbufs;
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
        unsigned bid = spare[--nspare], slot = br->tail + n;
        io_uring_buf_ring_add(br, bufs + (size_t)bid * bufsz, bufsz, bid,
                              io_uring_buf_ring_mask(nbufs), (int)n);
        if (bid_at) {
            slot_of[bid] = slot;
            bid_at[slot & (nbufs - 1)] = bid;
        }
        n++;
    }
    if (n) {
        io_uring_buf_ring_advance(br, (int)n);
        level += n;
    }
    if (waiting && level)
        rearm_waiting();
}

/* ---- completions ----------------------------------------------------------- */

static void on_accept(int res, unsigned flags)
{
    if (res >= 0) {
        if (lis_tcp) {
            int one = 1;
            setsockopt(res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        }
        struct conn *c = calloc(1, sizeof *c);
        if (!c) {
            close(res);
        } else {
            c->fd = res;
            c->qhead = c->qtail = -1;
            if (mode == R_SINGLE && !(c->own = malloc(bufsz))) {
                close(res);
                free(c);
            } else {
                arm_recv(c);
            }
        }
    }
    if (!(flags & IORING_CQE_F_MORE))
        arm_accept();                /* multishot ended (error or full CQ) */
}

/* A completion of a recv from the buffer ring: hand its bytes on. */
static void take_provided(struct conn *c, int res, unsigned flags)
{
    unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;
    if (mode == R_INC) {
        unsigned off = koff[bid];
        koff[bid] += (unsigned)res;
        if (!(flags & CQE_F_BUF_MORE)) {
            kdone[bid] = 1;
            level--;
        }
        take(c, bufs + (size_t)bid * bufsz + off, (unsigned)res, (int)bid);
    } else if (mode == R_BUNDLE) {
        /* The buffers follow each other in the ring from the first one. */
        unsigned slot = slot_of[bid], left = (unsigned)res;
        while (left) {
            unsigned b = bid_at[slot++ & (nbufs - 1)];
            unsigned n = left < bufsz ? left : bufsz;
            take(c, bufs + (size_t)b * bufsz, n, (int)b);
            left -= n;
            level--;
        }
    } else {
        take(c, bufs + (size_t)bid * bufsz, (unsigned)res, (int)bid);
        level--;
    }
}

static void on_recv(struct conn *c, int res, unsigned flags)
{
    if (mode == R_SINGLE) {
        c->ops--;
        c->recv_armed = 0;
        if (res > 0 && !c->closing)
            single_echo(c, (unsigned)res);
        else
            start_close(c);          /* EOF, error, or the send failed */
        return;
    }
    if (res > 0) {
        take_provided(c, res, flags);
        send_queued(c);
    }
    if (flags & IORING_CQE_F_MORE)
        return;
    c->ops--;
    c->recv_armed = 0;
    if (c->closing) {
        maybe_free(c);
    } else if (res == -ENOBUFS) {
        /* Every buffer is queued for sending somewhere; resume when one
         * comes back.  The bytes wait in the socket meanwhile. */
        c->waiting_bufs = 1;
        c->next_waiting = waiting;
        waiting = c;
        starved = 1;
    } else if (res > 0) {
        arm_recv(c);                 /* multishot stopped, e.g. CQ full */
    } else {
        start_close(c);              /* EOF or error */
    }
}

static void on_send(struct conn *c, int res)
{
    if (mode == R_SINGLE) {
        /* Only a failed send posts a completion (or every send, where the
         * kernel cannot skip them); the linked recv reports the rest. */
        if (!can_skip_cqe)
            c->ops--;
        c->sending = 0;
        if (res < 0)
            start_close(c);
        else
            maybe_free(c);
        return;
    }
    c->ops--;
    c->sending = 0;
    if (res < 0) {
        start_close(c);
        return;
    }
    unsigned done = (unsigned)res;
    while (done && c->qhead >= 0) {
        struct piece *pc = &pieces[c->qhead];
        if (done < pc->len) {        /* short send: the rest goes next */
            pc->p += done;
            pc->len -= done;
            break;
        }
        done -= pc->len;
        piece_pop(c);
    }
    if (c->closing)
        maybe_free(c);
    else
        send_queued(c);
}

/* ---- setup ------------------------------------------------------------------ */

static unsigned pow2_at_least(unsigned v)
{
    unsigned p = 1;
    while (p < v)
        p <<= 1;
    return p;
}

/* The provided-buffer ring for mode, or a fallback mode when the kernel
 * refuses it. */
static void setup_buffers(unsigned features)
{
    if (mode == R_SINGLE)
        return;
    if (mode == R_BUNDLE && !(features & FEAT_RECVSEND_BUNDLE)) {
        fallback = "no recv bundles (kernel 6.10+): multishot recv";
        mode = R_MULTISHOT;
    }
    int err;
    br = fs_setup_buf_ring(&ring, nbufs, BGID, mode == R_INC ? FS_PBUF_RING_INC : 0, &err);
    if (!br && mode == R_INC && err == -EINVAL) {
        fallback = "no incremental buffers (kernel 6.12+): multishot recv";
        mode = R_MULTISHOT;
        br = fs_setup_buf_ring(&ring, nbufs, BGID, 0, &err);
    }
    if (!br)
        skip("io_uring_register_buf_ring (kernel 5.19+)", -err);
    bufs = malloc((size_t)nbufs * bufsz);
    refs = calloc(nbufs, sizeof *refs);
    koff = calloc(nbufs, sizeof *koff);
    kdone = calloc(nbufs, 1);
    spare = calloc(nbufs, sizeof *spare);
    if (mode == R_BUNDLE) {
        slot_of = calloc(nbufs, sizeof *slot_of);
        bid_at = calloc(nbufs, sizeof *bid_at);
    }
    if (!bufs || !refs || !koff || !kdone || !spare || (mode == R_BUNDLE && (!slot_of || !bid_at)))
        skip("malloc", ENOMEM);
    /* Touch the pool now: a long-running server has, and otherwise the idle
     * memory workload would charge first-touch pages to new connections. */
    memset(bufs, 0xa5, (size_t)nbufs * bufsz);   /* not 0: gcc turns that into calloc */
    for (unsigned i = nbufs; i-- > 0;)
        buf_return(i);
    target = TARGET_MIN * 4;
    refill();
}

int main(int argc, char **argv)
{
    const char *addr = NULL, *recv = "multishot";
    bufsz = 0;
    nbufs = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--addr"))
            addr = argv[i + 1];
        else if (!strcmp(argv[i], "--recv"))
            recv = argv[i + 1];
        else if (!strcmp(argv[i], "--bufsz"))
            bufsz = (unsigned)strtoul(argv[i + 1], NULL, 0);
        else if (!strcmp(argv[i], "--nbufs"))
            nbufs = (unsigned)strtoul(argv[i + 1], NULL, 0);
        else if (!strcmp(argv[i], "--target"))
            fixed_target = (unsigned)strtoul(argv[i + 1], NULL, 0);
        else if (!strcmp(argv[i], "--file")) {
            printf("SKIP the C io_uring server has no sendfile mode\n");
            return 3;
        }
    }
    int known = 0;
    for (int m = 0; m < 4; m++)
        if (!strcmp(recv, rmode_names[m])) {
            mode = (enum rmode)m;
            known = 1;
        }
    if (!addr || !known) {
        fprintf(stderr, "usage: echo_uring --addr ADDR "
                "[--recv multishot|bundle|inc|single] [--bufsz N] [--nbufs N]\n");
        return 2;
    }
    if (!bufsz)
        bufsz = mode == R_INC ? 1 << 20 : mode == R_SINGLE ? 65536 : 16384;
    if (!nbufs)
        nbufs = mode == R_INC ? 64 : 4096;
    nbufs = pow2_at_least(nbufs);
    signal(SIGPIPE, SIG_IGN);
    fs_raise_nofile();

    struct io_uring_params p = {0};
    int rc = fs_uring_init(ENTRIES, &ring, &p, NULL, 0);
    if (rc < 0)
        skip("io_uring_queue_init", -rc);
    can_skip_cqe = !!(p.features & IORING_FEAT_CQE_SKIP);
    setup_buffers(p.features);

    char shown[300];
    /* Deep backlog: the load generator opens hundreds of connections at
     * once and a dropped SYN costs a 1 s retransmit. */
    lfd = fs_listen_spec(addr, 0, 4096, shown, sizeof shown);
    if (lfd < 0) {
        fprintf(stderr, "echo_uring: %s: %s\n", addr, strerror(-lfd));
        return 2;
    }
    lis_tcp = !strncmp(shown, "tcp:", 4);
    arm_accept();
    io_uring_submit(&ring);
    printf("READY %s%s%s\n", shown, *fallback ? " | " : "", fallback);
    fflush(stdout);

    for (;;) {
        if (br)
            refill();
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
            case OP_ACCEPT: on_accept(cqe->res, cqe->flags); break;
            case OP_RECV:   on_recv(c, cqe->res, cqe->flags); break;
            case OP_SEND:   on_send(c, cqe->res); break;
            default:        break;
            }
        }
        io_uring_cq_advance(&ring, seen);
    }
}
