/*
 * loadgen: the native load generator behind `fastsock bench`.
 *
 * One thread, no Python anywhere in the loop.  The aim is a generator that
 * is cheaper per request than the servers it measures; against the C echo
 * servers the floor is parity, since per message both sides do the same
 * kernel socket work (one send, one receive).  Two engines:
 *
 *   uring  (pingpong only; the default where io_uring works) one ring, every
 *          send an SQE, a multishot recv per connection into a provided
 *          buffer ring, one io_uring_enter per batch of completions.  The
 *          socket work stays in the kernel either way; what goes is the
 *          per-request epoll_wait/send/recv syscall overhead, which is what
 *          made the epoll engine cost as much CPU as a C echo server.
 *   epoll  every mode; readiness plus send/recv syscalls.  Used where the
 *          uring engine is not built (no liburing at build time), not
 *          allowed (old kernel, sandbox) or not implemented (other modes).
 *
 * `--engine auto|uring|epoll` picks one; the JSON says which ran ("engine").
 *
 * Every byte the generator sends comes from a fixed pseudo-random pattern,
 * indexed by the position in the connection's byte stream (offset by the
 * connection number, so bytes crossing connections are caught too).  Every
 * byte that comes back is compared with what must be at that position:
 * mismatches, short streams and surplus bytes are counted and reported, never
 * dropped silently.
 *
 * Modes:
 *   pingpong  N connections, each keeps `pipeline` messages of `size` bytes in
 *             flight; a message counts when its last echoed byte arrives.
 *   stream    N connections push `size`-byte writes with up to `window` bytes
 *             unanswered; counts echoed bytes (bytes per second each way).
 *   churn     N slots, each: connect, send `size` bytes, read them back,
 *             close; one request = one accepted connection.
 *   recv      N slots, each: connect, read until EOF, expect exactly `size`
 *             bytes of the pattern (the server sends a pattern file).
 *   hold      connect N, one round trip each, print a JSON line, then hold
 *             the connections open until stdin reaches EOF (idle memory).
 *   pattern   write `size` bytes of the pattern to --file and exit.
 *
 * Addresses: tcp:HOST:PORT, unix:/path, unix:@abstract-name, and
 * udp:HOST:PORT for pingpong (each "connection" a connected UDP socket, one
 * datagram per message).
 * Build: -DHAVE_LIBURING and liburing for the uring engine; without it
 * only the epoll engine is compiled in.
 * Output: one JSON object on stdout.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common.h"          /* and liburing.h with HAVE_LIBURING */

#define PATLEN 65521u            /* prime: no message size divides it */
#define RBUF (256 * 1024)
#define HBUCKETS 4096
#define SUB_BITS 7

enum mode { PINGPONG, STREAM, CHURN, RECV, HOLD, PATTERN };
enum cstate { C_IDLE, C_CONNECTING, C_OPEN };
enum engine { E_AUTO, E_URING, E_EPOLL };

struct conn {
    int fd;
    int idx;
    enum cstate state;
    int want_out;                /* EPOLLOUT currently registered */
    uint64_t base;               /* pattern offset of stream byte 0 */
    uint64_t tx, tx_goal, rx;    /* stream positions */
    uint64_t started;            /* churn/recv: connect time, ns */
    uint64_t *sent_at;           /* pingpong: send time per in-flight msg */
    size_t send_len;             /* uring: bytes of the send SQE in flight */
};

static struct {
    enum mode mode;
    int conns, pipeline, server_pid, linger0;
    size_t size, window;
    double warmup, duration;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    int tcp, udp;
    const char *file;
    enum engine engine;
} opt = {PINGPONG, 50, 1, 0, 1, 64, 0, 0.5, 2.0, {0}, 0, 0, 0, NULL, E_AUTO};

static unsigned char *pat;       /* PATLEN + RBUF bytes, so any slice is flat */
static unsigned char rbuf[RBUF];
static int epfd;
static struct conn *conns;

/* Counters; `measuring` gates what lands in the reported window. */
static int measuring;
static uint64_t n_req, n_bytes;
static uint64_t hist[HBUCKETS];
static uint64_t lat_sum_ns, lat_max_ns;
/* Errors always count, whatever the phase. */
static uint64_t e_mismatch, e_surplus, e_eof, e_reset, e_connect, e_short;
static uint64_t connect_retries;
static char first_error[200];

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

static void note_error(const char *fmt, int idx, long v)
{
    if (!first_error[0])
        snprintf(first_error, sizeof first_error, fmt, idx, v);
}

static void die(const char *what)
{
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(2);
}

/* Log-linear histogram: 64 sub-buckets per octave above 128 ns, so any
 * percentile is within 1.6% of the true value. */
static int bucket_of(uint64_t v)
{
    if (v < (1u << SUB_BITS))
        return (int)v;
    int msb = 63 - __builtin_clzll(v);
    int shift = msb - (SUB_BITS - 1);
    int idx = shift * (1 << (SUB_BITS - 1)) + (int)(v >> shift);
    return idx < HBUCKETS ? idx : HBUCKETS - 1;
}

static double bucket_mid_ns(int idx)
{
    if (idx < (1 << SUB_BITS))
        return idx;
    int half = 1 << (SUB_BITS - 1);
    int shift = idx / half - 1;
    uint64_t mant = (uint64_t)(idx - shift * half);
    return ((double)(mant << shift) + (double)((mant + 1) << shift)) / 2.0;
}

static void record_latency(uint64_t ns)
{
    if (!measuring)
        return;
    hist[bucket_of(ns)]++;
    lat_sum_ns += ns;
    if (ns > lat_max_ns)
        lat_max_ns = ns;
}

static double percentile_us(double p)
{
    uint64_t total = 0, seen = 0;
    for (int i = 0; i < HBUCKETS; i++)
        total += hist[i];
    if (!total)
        return 0;
    uint64_t rank = (uint64_t)(p * (double)total);
    if (rank >= total)
        rank = total - 1;
    for (int i = 0; i < HBUCKETS; i++) {
        seen += hist[i];
        if (seen > rank)
            return bucket_mid_ns(i) / 1000.0;
    }
    return 0;
}

static void make_pattern(void)
{
    pat = malloc(PATLEN + RBUF);
    if (!pat)
        die("malloc");
    uint32_t x = 2463534242u;            /* xorshift32: cheap, no short cycles */
    for (size_t i = 0; i < PATLEN; i++) {
        x ^= x << 13; x ^= x >> 17; x ^= x << 5;
        pat[i] = (unsigned char)x;
    }
    /* RBUF > PATLEN, so the tail repeats the pattern more than once. */
    for (size_t i = PATLEN; i < PATLEN + RBUF; i++)
        pat[i] = pat[i - PATLEN];
}

static const unsigned char *pat_at(uint64_t off)
{
    return pat + off % PATLEN;
}

/* ---- address ------------------------------------------------------------ */

static void parse_addr(const char *s)
{
    struct fs_addr a;
    int rc = fs_addr_parse(s, 0, &a);
    if (rc < 0) {
        fprintf(stderr, "loadgen: %s: %s (expected tcp:HOST:PORT, "
                "udp:HOST:PORT, unix:PATH or unix:@NAME)\n", s, strerror(-rc));
        exit(2);
    }
    opt.addr = a.ss;
    opt.addrlen = a.len;
    opt.udp = a.type == SOCK_DGRAM;
    opt.tcp = !opt.udp && a.ss.ss_family != AF_UNIX;
}

static int new_socket(int nonblock)
{
    int fd = socket(opt.addr.ss_family,
                    (opt.udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_CLOEXEC
                    | (nonblock ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0)
        die("socket");
    if (opt.tcp) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (opt.linger0 && (opt.mode == CHURN || opt.mode == RECV)) {
            /* Close with RST: otherwise the client side piles up TIME_WAIT
             * sockets and runs out of ephemeral ports within seconds. */
            struct linger lg = {1, 0};
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        }
    }
    return fd;
}

/* ---- connection plumbing ---------------------------------------------- */

static void set_out(struct conn *c, int on)
{
    if (c->want_out == on)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0),
                             .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        die("epoll_ctl mod");
    c->want_out = on;
}

static void conn_close(struct conn *c)
{
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->state = C_IDLE;
    c->want_out = 0;
}

static void conn_reset_stream(struct conn *c)
{
    /* Churn and recv start each connection at pattern offset 0 + idx*7919;
     * recv must start at 0 because the server sends the pattern file. */
    c->base = opt.mode == RECV ? 0 : (uint64_t)c->idx * 7919u;
    c->tx = c->rx = 0;
    c->tx_goal = 0;
}

static void conn_start_connect(struct conn *c);

/* A send or recv failed: the connection is gone (both engines). */
static void count_reset(struct conn *c, int sending, long err)
{
    e_reset++;
    note_error(sending ? "conn %d: send failed, errno %ld"
                       : "conn %d: recv failed, errno %ld", c->idx, err);
}

/* Write as much of [tx, tx_goal) as the socket takes. Returns -1 on error. */
static int conn_flush(struct conn *c)
{
    while (c->tx < c->tx_goal) {
        size_t n = c->tx_goal - c->tx;
        if (n > opt.size && opt.mode == STREAM)
            n = opt.size;                /* stream: writes of exactly `size` */
        if (n > RBUF)
            n = RBUF;
        ssize_t w = send(c->fd, pat_at(c->base + c->tx), n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN) {
                set_out(c, 1);
                return 0;
            }
            if (errno == EINTR)
                continue;
            count_reset(c, 1, errno);
            return -1;
        }
        c->tx += (uint64_t)w;
    }
    set_out(c, 0);
    return 0;
}

static void stream_refill(struct conn *c)
{
    c->tx_goal = c->rx + opt.window;
}

/* A connection finished (churn, recv) or broke: replace it. */
static void conn_recycle(struct conn *c)
{
    conn_close(c);
    conn_start_connect(c);
}

static void on_connected(struct conn *c)
{
    c->state = C_OPEN;
    conn_reset_stream(c);
    if (opt.mode == CHURN)
        c->tx_goal = opt.size;
    if (opt.mode == RECV) {
        set_out(c, 0);                   /* only reads from here on */
        return;
    }
    if (conn_flush(c) < 0)
        conn_recycle(c);
}

static void conn_start_connect(struct conn *c)
{
    c->fd = new_socket(1);
    c->started = now_ns();
    c->want_out = 1;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    int rc = connect(c->fd, (struct sockaddr *)&opt.addr, opt.addrlen);
    if (rc < 0 && errno == EAGAIN) {
        /* Unix socket with a full accept queue: the server is behind.
         * Back off briefly; this is pressure, not a broken server. */
        connect_retries++;
        close(c->fd);
        c->fd = -1;
        c->state = C_IDLE;
        return;
    }
    if (rc < 0 && errno != EINPROGRESS) {
        e_connect++;
        note_error("conn %d: connect failed, errno %ld", c->idx, errno);
        close(c->fd);
        c->fd = -1;
        c->state = C_IDLE;
        return;
    }
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0)
        die("epoll_ctl add");
    c->state = C_CONNECTING;
    if (rc == 0) {
        c->want_out = 1;
        on_connected(c);
    }
}

/* Compare received bytes with the pattern; count, never drop. */
static void verify(struct conn *c, const unsigned char *buf, size_t n)
{
    if (opt.mode != RECV && c->rx + n > c->tx) {
        e_surplus += c->rx + n - c->tx;
        note_error("conn %d: %ld bytes more than were sent", c->idx,
                   (long)(c->rx + n - c->tx));
        n = c->tx - c->rx;
    }
    if (opt.mode == RECV && c->rx + n > opt.size) {
        e_surplus += c->rx + n - opt.size;
        note_error("conn %d: %ld bytes beyond the file size", c->idx,
                   (long)(c->rx + n - opt.size));
        n = opt.size - c->rx;
    }
    const unsigned char *want = pat_at(c->base + c->rx);
    if (memcmp(buf, want, n) != 0) {
        for (size_t i = 0; i < n; i++) {
            if (buf[i] != want[i]) {
                if (!e_mismatch)
                    note_error("conn %d: wrong byte at stream offset %ld",
                               c->idx, (long)(c->rx + i));
                e_mismatch++;
            }
        }
    }
}

/* Pingpong: the messages completed by the bytes up to c->rx (rx was
 * `before`) each free a pipeline slot; its replacement is due at once. */
static void pingpong_account(struct conn *c, uint64_t before)
{
    uint64_t done_before = before / opt.size, done_now = c->rx / opt.size;
    if (done_now == done_before)
        return;
    uint64_t t = now_ns();
    for (uint64_t m = done_before; m < done_now; m++) {
        record_latency(t - c->sent_at[m % opt.pipeline]);
        if (measuring)
            n_req++;
        c->sent_at[m % opt.pipeline] = t;
        c->tx_goal += opt.size;
    }
}

/* n bytes arrived in buf (either engine): check them, advance the stream
 * and, for pingpong, account completed messages.  Sending is the caller's. */
static void take_bytes(struct conn *c, const unsigned char *buf, size_t n)
{
    verify(c, buf, n);
    uint64_t before = c->rx;
    c->rx += n;
    if (measuring)
        n_bytes += n;
    if (opt.mode == PINGPONG)
        pingpong_account(c, before);
}

static void on_bytes(struct conn *c, size_t n)
{
    take_bytes(c, rbuf, n);
    switch (opt.mode) {
    case PINGPONG:
        if (c->tx_goal > c->tx && conn_flush(c) < 0)
            conn_recycle(c);
        break;
    case STREAM:
        stream_refill(c);
        if (!c->want_out && conn_flush(c) < 0)
            conn_recycle(c);
        break;
    case CHURN:
        if (c->rx >= opt.size) {
            record_latency(now_ns() - c->started);
            if (measuring)
                n_req++;
            conn_recycle(c);
        }
        break;
    default:
        break;
    }
}

/* The server closed the stream: the end of a recv file, else an error. */
static void count_eof(struct conn *c)
{
    if (opt.mode == RECV) {
        if (c->rx == opt.size) {
            record_latency(now_ns() - c->started);
            if (measuring)
                n_req++;
        } else {
            e_short++;
            note_error("conn %d: file ended early, %ld bytes", c->idx,
                       (long)c->rx);
        }
    } else {
        e_eof++;
        note_error("conn %d: server closed the connection after %ld bytes",
                   c->idx, (long)c->rx);
    }
}

static void on_event(struct conn *c, uint32_t ev)
{
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            e_connect++;
            note_error("conn %d: connect failed, errno %ld", c->idx, err);
            conn_close(c);
            return;                      /* retried by the idle sweep */
        }
        if (!(ev & (EPOLLOUT | EPOLLIN)))
            return;
        on_connected(c);
        if (c->state != C_OPEN)
            return;
    }
    if ((ev & EPOLLOUT) && c->want_out) {
        if (conn_flush(c) < 0) {
            conn_recycle(c);
            return;
        }
    }
    if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        for (;;) {
            ssize_t r = recv(c->fd, rbuf, RBUF, 0);
            if (r > 0) {
                int fd = c->fd;
                on_bytes(c, (size_t)r);
                if (c->fd != fd || c->state != C_OPEN)
                    return;              /* recycled inside on_bytes */
                if ((size_t)r < RBUF)
                    return;              /* drained (level-triggered anyway) */
                continue;
            }
            if (r == 0) {
                count_eof(c);
                conn_recycle(c);
                return;
            }
            if (errno == EAGAIN)
                return;
            if (errno == EINTR)
                continue;
            count_reset(c, 0, errno);
            conn_recycle(c);
            return;
        }
    }
}

/* ---- server CPU from /proc -------------------------------------------- */

static double proc_cpu_seconds(int pid)
{
    char path[64], buf[1024];
    if (pid <= 0)
        return -1;
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    char *p = strrchr(buf, ')');         /* comm may contain spaces */
    if (!p)
        return -1;
    unsigned long long utime = 0, stime = 0;
    /* after ')': state(3) ... utime is field 14, stime 15 */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
               &utime, &stime) != 2)
        return -1;
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

static double self_cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
           ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* ---- modes -------------------------------------------------------------- */

static int connect_blocking(struct conn *c)
{
    c->fd = new_socket(0);
    if (connect(c->fd, (struct sockaddr *)&opt.addr, opt.addrlen) < 0) {
        e_connect++;
        note_error("conn %d: connect failed, errno %ld", c->idx, errno);
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    return 0;
}

static void print_errors_json(void)
{
    uint64_t total = e_mismatch + e_surplus + e_eof + e_reset + e_connect + e_short;
    printf("\"errors\": %llu, \"mismatched_bytes\": %llu, \"surplus_bytes\": %llu, "
           "\"unexpected_eof\": %llu, \"resets\": %llu, \"connect_errors\": %llu, "
           "\"short_files\": %llu, \"connect_retries\": %llu, \"first_error\": \"%s\"",
           (unsigned long long)total, (unsigned long long)e_mismatch,
           (unsigned long long)e_surplus, (unsigned long long)e_eof,
           (unsigned long long)e_reset, (unsigned long long)e_connect,
           (unsigned long long)e_short, (unsigned long long)connect_retries,
           first_error);
}

static int run_hold(void)
{
    int ok = 0;
    for (int i = 0; i < opt.conns; i++) {
        struct conn *c = &conns[i];
        conn_reset_stream(c);
        if (connect_blocking(c) < 0)
            continue;
        struct timeval tv = {5, 0};
        setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        if (send(c->fd, pat_at(c->base), opt.size, MSG_NOSIGNAL) != (ssize_t)opt.size) {
            e_reset++;
            continue;
        }
        c->tx = opt.size;
        while (c->rx < opt.size) {
            ssize_t r = recv(c->fd, rbuf, opt.size - c->rx, 0);
            if (r <= 0) {
                e_eof++;
                note_error("conn %d: no echo in hold mode (%ld)", c->idx, (long)r);
                break;
            }
            verify(c, rbuf, (size_t)r);
            c->rx += (uint64_t)r;
        }
        if (c->rx == opt.size)
            ok++;
    }
    printf("{\"mode\": \"hold\", \"conns\": %d, \"held\": %d, ", opt.conns, ok);
    print_errors_json();
    printf("}\n");
    fflush(stdout);
    /* Hold until the runner has read the server's memory and closes stdin. */
    char b[64];
    while (read(0, b, sizeof b) > 0)
        ;
    for (int i = 0; i < opt.conns; i++)
        if (conns[i].fd >= 0)
            close(conns[i].fd);
    return 0;
}

static int run_pattern(void)
{
    if (!opt.file) {
        fprintf(stderr, "loadgen: pattern mode needs --file\n");
        return 2;
    }
    FILE *f = fopen(opt.file, "wb");
    if (!f)
        die(opt.file);
    for (size_t off = 0; off < opt.size;) {
        size_t n = opt.size - off < PATLEN ? opt.size - off : PATLEN;
        if (fwrite(pat_at(off), 1, n, f) != n)
            die("fwrite");
        off += n;
    }
    if (fclose(f))
        die("fclose");
    return 0;
}

/* ---- timed window and report (both engines) ---------------------------- */

/* Warm-up until t_measure, counters on until t_end.  Server and own CPU are
 * read at both edges, so CPU and counts cover the same span. */
static struct {
    uint64_t t_measure, t_end, started_at, stopped_at;
    double srv_cpu0, srv_cpu1, self_cpu0, self_cpu1;
} win;

static void window_init(void)
{
    win.t_measure = now_ns() + (uint64_t)(opt.warmup * 1e9);
    win.t_end = win.t_measure + (uint64_t)(opt.duration * 1e9);
}

/* Opens and closes the window as time passes; 1 once it has closed. */
static int window_tick(uint64_t t)
{
    if (!measuring && !win.started_at && t >= win.t_measure) {
        measuring = 1;
        win.started_at = t;
        win.srv_cpu0 = proc_cpu_seconds(opt.server_pid);
        win.self_cpu0 = self_cpu_seconds();
    }
    if (measuring && t >= win.t_end) {
        measuring = 0;
        win.stopped_at = t;
        win.srv_cpu1 = proc_cpu_seconds(opt.server_pid);
        win.self_cpu1 = self_cpu_seconds();
        return 1;
    }
    return 0;
}

/* The next edge of the window, for the engines' wait timeouts. */
static uint64_t window_next(void)
{
    return win.started_at ? win.t_end : win.t_measure;
}

static void print_report(const char *engine)
{
    double secs = (double)(win.stopped_at - win.started_at) / 1e9;
    /* A generator kept off its CPU for the whole window (an overloaded
     * host) opens and closes it in one tick: report zero, not NaN, which
     * is no JSON. */
    double per_s = secs > 0 ? 1.0 / secs : 0.0;
    double self_cpu = win.self_cpu1 - win.self_cpu0;
    double srv_cpu = (win.srv_cpu0 >= 0 && win.srv_cpu1 >= 0)
                     ? win.srv_cpu1 - win.srv_cpu0 : -1;
    uint64_t hn = 0;
    for (int i = 0; i < HBUCKETS; i++)
        hn += hist[i];

    static const char *names[] = {"pingpong", "stream", "churn", "recv", "hold", "pattern"};
    printf("{\"mode\": \"%s\", \"engine\": \"%s\", \"conns\": %d, \"size\": %zu, "
           "\"pipeline\": %d, \"requests\": %llu, \"bytes\": %llu, "
           "\"seconds\": %.6f, \"rps\": %.1f, \"mib_s\": %.3f, ",
           names[opt.mode], engine, opt.conns, opt.size, opt.pipeline,
           (unsigned long long)n_req, (unsigned long long)n_bytes, secs,
           n_req * per_s, n_bytes * per_s / 1048576.0);
    if (hn)
        printf("\"p50_us\": %.2f, \"p99_us\": %.2f, \"p999_us\": %.2f, "
               "\"mean_us\": %.2f, \"max_us\": %.2f, ",
               percentile_us(0.50), percentile_us(0.99), percentile_us(0.999),
               lat_sum_ns / 1000.0 / hn, lat_max_ns / 1000.0);
    else
        printf("\"p50_us\": null, \"p99_us\": null, \"p999_us\": null, "
               "\"mean_us\": null, \"max_us\": null, ");
    if (srv_cpu >= 0)
        printf("\"server_cpu_s\": %.3f, ", srv_cpu);
    else
        printf("\"server_cpu_s\": null, ");
    printf("\"client_cpu_s\": %.3f, ", self_cpu);
    print_errors_json();
    printf("}\n");
}

/* Pingpong and stream connections are opened before the clock starts, in
 * blocking mode (simple, and the accept queue cannot overflow), then
 * switched to non-blocking: the epoll engine needs EAGAIN, and io_uring
 * tries a non-blocking attempt first anyway. */
static int open_long_lived(void)
{
    for (int i = 0; i < opt.conns; i++) {
        struct conn *c = &conns[i];
        if (connect_blocking(c) < 0) {
            fprintf(stderr, "loadgen: %s\n", first_error);
            return -1;
        }
        int fl = fcntl(c->fd, F_GETFL);
        fcntl(c->fd, F_SETFL, fl | O_NONBLOCK);
        c->state = C_OPEN;
        conn_reset_stream(c);
    }
    return 0;
}

/* What a long-lived connection owes the server at the start. */
static void prime_conn(struct conn *c, uint64_t t)
{
    if (opt.mode == PINGPONG) {
        for (int k = 0; k < opt.pipeline; k++)
            c->sent_at[k] = t;
        c->tx_goal = (uint64_t)opt.pipeline * opt.size;
    } else {
        stream_refill(c);
    }
}

/* ---- io_uring engine (pingpong) ----------------------------------------- */

#ifdef HAVE_LIBURING
#define BGID 0
enum { OP_RECV = 1, OP_SEND = 2, OP_TIMER = 3 };

static struct io_uring ring;
static struct io_uring_buf_ring *br;
static unsigned char *ubufs;
static unsigned nbufs, bufsz;
static int quiet_sends;                  /* sends post a CQE only on failure */

static unsigned pow2_at_least(size_t v, unsigned lo, unsigned hi)
{
    unsigned p = lo;
    while (p < v && p < hi)
        p <<= 1;
    return p;
}

/* Ring and provided buffers, or -1 with the reason in `why` (the caller
 * falls back to epoll). */
static int uring_setup(char *why, size_t whylen)
{
    /* One recv and one send per connection can be queued in a batch; a
     * full SQ is flushed early (sqe_get), so this only bounds batch size. */
    unsigned sq = pow2_at_least((size_t)opt.conns * 2 + 1, 64, 4096);
    /* Multishot recv posts as many CQEs as the data arrives in; a CQ that
     * overflows stops it (re-armed, but each stop costs a round trip). */
    unsigned cq = pow2_at_least((size_t)opt.conns * 8, 4096, 65536);
    struct io_uring_params p = {
        .flags = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP, .cq_entries = cq};
    int rc = fs_uring_init(sq, &ring, &p, NULL, 0);
    if (rc < 0) {
        snprintf(why, whylen, "io_uring_queue_init: %s", strerror(-rc));
        return -1;
    }
    quiet_sends = opt.pipeline == 1 && (p.features & IORING_FEAT_CQE_SKIP);
    /* Every buffer is returned as soon as it is checked, so the pool only
     * has to cover what one batch of CQEs holds: about one per connection
     * and message in flight.  Small buffers sized to that stay in cache. */
    nbufs = pow2_at_least((size_t)opt.conns * opt.pipeline * 2, 64, 4096);
    bufsz = pow2_at_least(opt.size * opt.pipeline, 4096, 65536);
    ubufs = malloc((size_t)nbufs * bufsz);
    if (!ubufs)
        die("buffer pool");
    br = fs_setup_buf_ring(&ring, nbufs, BGID, 0, &rc);
    if (!br) {
        snprintf(why, whylen, "io_uring_register_buf_ring (kernel 5.19+): %s",
                 strerror(-rc));
        io_uring_queue_exit(&ring);
        free(ubufs);
        return -1;
    }
    for (unsigned i = 0; i < nbufs; i++)
        io_uring_buf_ring_add(br, ubufs + (size_t)i * bufsz, bufsz, i,
                              io_uring_buf_ring_mask(nbufs), i);
    io_uring_buf_ring_advance(br, nbufs);
    return 0;
}

static struct io_uring_sqe *sqe_get(void)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
    if (!sqe) {                          /* SQ full: push it out and retry */
        io_uring_submit(&ring);
        sqe = io_uring_get_sqe(&ring);
    }
    return sqe;
}

/* user_data: connection index and operation; conns[] never moves, and a
 * closed connection's late CQEs are recognised by its state. */
static uint64_t ud(const struct conn *c, int op)
{
    return ((uint64_t)(c ? c->idx : 0) << 2) | (uint64_t)op;
}

static void uring_arm_recv(struct conn *c)
{
    struct io_uring_sqe *sqe = sqe_get();
    io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = BGID;
    io_uring_sqe_set_data64(sqe, ud(c, OP_RECV));
}

/* Queue [tx, tx_goal) as one send.  One send in flight per connection: two
 * sends on a stream socket can complete out of order when the first has to
 * wait for space.  The bytes come straight from the pattern, which never
 * changes or moves, so the buffer outlives every SQE that points into it.
 *
 * With one message in flight (pipeline 1) the send posts no CQE unless it
 * fails: MSG_WAITALL makes the kernel finish a short send itself, and the
 * next send is only due once the whole message has come back, which proves
 * this one is done.  That halves the CQEs and spares the extra wake-up they
 * cause.  Deeper pipelines send again before that, so they need the CQE. */
static void uring_send(struct conn *c)
{
    if (c->send_len && quiet_sends && c->rx >= c->tx)
        c->send_len = 0;                 /* echoed, hence sent */
    if (c->send_len || c->tx >= c->tx_goal)
        return;
    size_t n = c->tx_goal - c->tx;
    if (n > RBUF)
        n = RBUF;                        /* pat is flat for RBUF bytes */
    struct io_uring_sqe *sqe = sqe_get();
    io_uring_prep_send(sqe, c->fd, pat_at(c->base + c->tx), n,
                       MSG_NOSIGNAL | (quiet_sends ? MSG_WAITALL : 0));
    if (quiet_sends)
        sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
    io_uring_sqe_set_data64(sqe, ud(c, OP_SEND));
    c->send_len = n;
    /* tx counts bytes handed to the kernel, so verify() never sees an echo
     * of bytes it has not accounted as sent; a short send gives some back. */
    c->tx += n;
}

/* Wake the loop at `at` even if no socket does (server stalled, every
 * connection closed).  The kernel copies the timespec during submission. */
static void uring_timer(uint64_t at)
{
    static struct __kernel_timespec ts;
    ts.tv_sec = (long long)(at / 1000000000u);
    ts.tv_nsec = (long long)(at % 1000000000u);
    struct io_uring_sqe *sqe = sqe_get();
    io_uring_prep_timeout(sqe, &ts, 0, IORING_TIMEOUT_ABS);
    io_uring_sqe_set_data64(sqe, ud(NULL, OP_TIMER));
    io_uring_submit(&ring);
}

/* A broken connection is closed, not replaced: a replacement would start a
 * new stream with nothing in flight, as in the epoll engine.  shutdown()
 * ends the multishot recv (its last CQE is ignored); close() alone would
 * not, since the ring holds its own reference to the socket. */
static void uring_close(struct conn *c)
{
    shutdown(c->fd, SHUT_RDWR);
    close(c->fd);
    c->fd = -1;
    c->state = C_IDLE;
}

static void uring_on_recv(struct conn *c, int res, unsigned flags)
{
    if (res > 0 && (flags & IORING_CQE_F_BUFFER)) {
        unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;
        if (c->state == C_OPEN)
            take_bytes(c, ubufs + (size_t)bid * bufsz, (size_t)res);
        /* Checked: the kernel may fill it again right away. */
        io_uring_buf_ring_add(br, ubufs + (size_t)bid * bufsz, bufsz, bid,
                              io_uring_buf_ring_mask(nbufs), 0);
        io_uring_buf_ring_advance(br, 1);
        if (c->state == C_OPEN)
            uring_send(c);
    }
    if ((flags & IORING_CQE_F_MORE) || c->state != C_OPEN)
        return;
    /* The multishot recv has ended.  Out of buffers (they are back in the
     * ring by now: every earlier CQE has been handled) or a full CQ stop it
     * with the socket still fine: re-arm. */
    if (res > 0 || res == -ENOBUFS) {
        uring_arm_recv(c);
    } else if (res == 0) {
        count_eof(c);
        uring_close(c);
    } else {
        count_reset(c, 0, -res);
        uring_close(c);
    }
}

static void uring_on_send(struct conn *c, int res)
{
    size_t len = c->send_len;
    c->send_len = 0;
    if (c->state != C_OPEN)
        return;
    if (res <= 0) {                      /* 0 for a non-empty send: no progress */
        count_reset(c, 1, -res);
        uring_close(c);
        return;
    }
    c->tx -= len - (size_t)res;          /* short send: resend the rest */
    uring_send(c);
}

static void run_uring(void)
{
    uint64_t t = now_ns();
    for (int i = 0; i < opt.conns; i++) {
        struct conn *c = &conns[i];
        prime_conn(c, t);
        uring_arm_recv(c);               /* before the send: catch the echo */
        uring_send(c);
    }
    window_init();
    uring_timer(window_next());
    for (;;) {
        uint64_t edge = window_next();
        if (window_tick(now_ns()))
            break;
        if (window_next() != edge)
            uring_timer(window_next());
        /* One syscall: this batch's sends and re-arms go in, and it returns
         * with at least one completion (or the timer). */
        int rc = io_uring_submit_and_wait(&ring, 1);
        if (rc < 0 && rc != -EINTR && rc != -EBUSY && rc != -ETIME) {
            errno = -rc;
            die("io_uring_submit_and_wait");
        }
        struct io_uring_cqe *cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&ring, head, cqe) {
            seen++;
            uint64_t u = cqe->user_data;
            struct conn *c = &conns[u >> 2];
            switch (u & 3) {
            case OP_RECV: uring_on_recv(c, cqe->res, cqe->flags); break;
            case OP_SEND: uring_on_send(c, cqe->res); break;
            default:      break;         /* timer: the clock is read above */
            }
        }
        io_uring_cq_advance(&ring, seen);
    }
}
#endif /* HAVE_LIBURING */

/* ---- epoll engine (every mode) ------------------------------------------ */

static int run_epoll(void)
{
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1");

    if (opt.mode == PINGPONG || opt.mode == STREAM) {
        uint64_t t = now_ns();
        for (int i = 0; i < opt.conns; i++) {
            struct conn *c = &conns[i];
            struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
            if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0)
                die("epoll_ctl add");
            prime_conn(c, t);
            if (conn_flush(c) < 0)
                return 3;
        }
    } else {
        for (int i = 0; i < opt.conns; i++)
            conn_start_connect(&conns[i]);
    }

    window_init();
    int nev_max = opt.conns < 1024 ? opt.conns : 1024;
    struct epoll_event *evs = calloc(nev_max, sizeof *evs);

    for (;;) {
        uint64_t t = now_ns();
        if (window_tick(t))
            break;
        int timeout_ms = (int)((window_next() - t) / 1000000u) + 1;
        /* Churn/recv slots that failed to connect are retried every 1 ms. */
        int idle = 0;
        if (opt.mode == CHURN || opt.mode == RECV) {
            for (int i = 0; i < opt.conns; i++) {
                if (conns[i].state == C_IDLE) {
                    conn_start_connect(&conns[i]);
                    if (conns[i].state == C_IDLE)
                        idle = 1;
                }
            }
        }
        if (idle && timeout_ms > 1)
            timeout_ms = 1;
        int n = epoll_wait(epfd, evs, nev_max, timeout_ms);
        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        for (int i = 0; i < n; i++)
            on_event(evs[i].data.ptr, evs[i].events);
    }
    return 0;
}

static int run_load(void)
{
    enum engine eng = E_EPOLL;
#ifdef HAVE_LIBURING
    if (opt.engine != E_EPOLL && opt.mode == PINGPONG) {
        char why[200];
        if (uring_setup(why, sizeof why) == 0)
            eng = E_URING;
        else if (opt.engine == E_URING) {
            fprintf(stderr, "loadgen: --engine uring: %s\n", why);
            return 2;
        } else {
            fprintf(stderr, "loadgen: io_uring unavailable (%s), using epoll\n", why);
        }
    }
#endif
    if (opt.engine == E_URING && eng != E_URING) {
        fprintf(stderr, "loadgen: --engine uring: %s\n",
                opt.mode != PINGPONG ? "only the pingpong mode has it"
                                     : "built without liburing");
        return 2;
    }
    if ((opt.mode == PINGPONG || opt.mode == STREAM) && open_long_lived() < 0)
        return 3;
    int rc = 0;
#ifdef HAVE_LIBURING
    if (eng == E_URING)
        run_uring();
    else
#endif
        rc = run_epoll();
    if (rc != 0)
        return rc;
    print_report(eng == E_URING ? "uring" : "epoll");
    return 0;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen --addr tcp:HOST:PORT|unix:PATH|unix:@NAME|udp:HOST:PORT\n"
            "  [--mode pingpong|stream|churn|recv|hold|pattern] [--conns N]\n"
            "  [--size BYTES] [--pipeline N] [--window BYTES] [--warmup S]\n"
            "  [--duration S] [--server-pid PID] [--no-linger0] [--file F]\n"
            "  [--engine auto|uring|epoll]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    static struct option lo[] = {
        {"addr", 1, 0, 'a'}, {"mode", 1, 0, 'm'}, {"conns", 1, 0, 'c'},
        {"size", 1, 0, 's'}, {"pipeline", 1, 0, 'p'}, {"window", 1, 0, 'W'},
        {"warmup", 1, 0, 'w'}, {"duration", 1, 0, 'd'},
        {"server-pid", 1, 0, 'P'}, {"no-linger0", 0, 0, 'L'},
        {"file", 1, 0, 'f'}, {"engine", 1, 0, 'e'}, {0, 0, 0, 0}};
    const char *addr = NULL, *mode = "pingpong";
    int ch;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case 'a': addr = optarg; break;
        case 'm': mode = optarg; break;
        case 'c': opt.conns = atoi(optarg); break;
        case 's': opt.size = strtoull(optarg, NULL, 10); break;
        case 'p': opt.pipeline = atoi(optarg); break;
        case 'W': opt.window = strtoull(optarg, NULL, 10); break;
        case 'w': opt.warmup = atof(optarg); break;
        case 'd': opt.duration = atof(optarg); break;
        case 'P': opt.server_pid = atoi(optarg); break;
        case 'L': opt.linger0 = 0; break;
        case 'f': opt.file = optarg; break;
        case 'e':
            if (!strcmp(optarg, "auto"))
                opt.engine = E_AUTO;
            else if (!strcmp(optarg, "uring"))
                opt.engine = E_URING;
            else if (!strcmp(optarg, "epoll"))
                opt.engine = E_EPOLL;
            else
                usage();
            break;
        default: usage();
        }
    }
    static const char *names[] = {"pingpong", "stream", "churn", "recv", "hold", "pattern"};
    int found = 0;
    for (int i = 0; i < 6; i++)
        if (!strcmp(mode, names[i])) {
            opt.mode = (enum mode)i;
            found = 1;
        }
    if (!found || opt.conns < 1 || opt.size < 1 || opt.pipeline < 1)
        usage();
    make_pattern();
    if (opt.mode == PATTERN)
        return run_pattern();
    if (!addr)
        usage();
    parse_addr(addr);
    if (opt.udp && (opt.mode != PINGPONG || opt.pipeline != 1 || opt.size > 65507)) {
        /* A lost datagram is never resent: only one message in flight per
         * socket, each a single datagram, keeps a loss from desynchronising
         * the byte positions the checks rely on. */
        fprintf(stderr, "loadgen: udp: pingpong only, pipeline 1, size <= 65507\n");
        exit(2);
    }
    if (opt.window == 0)
        opt.window = opt.size * 4 > 65536 ? opt.size * 4 : 65536;
    fs_raise_nofile();

    conns = calloc(opt.conns, sizeof *conns);
    for (int i = 0; i < opt.conns; i++) {
        conns[i].fd = -1;
        conns[i].idx = i;
        if (opt.mode == PINGPONG)
            conns[i].sent_at = calloc(opt.pipeline, sizeof(uint64_t));
    }
    if (opt.mode == HOLD)
        return run_hold();
    return run_load();
}
