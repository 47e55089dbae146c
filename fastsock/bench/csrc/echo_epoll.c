/*
 * echo_epoll: the plain C readiness server that `fastsock bench` uses as the
 * limit for the epoll model.
 *
 *   echo_epoll --addr tcp:HOST:PORT|unix:PATH|unix:@NAME [--file F]
 *
 * Edge-triggered epoll, nonblocking sockets, accept4 in a loop.  A readable
 * connection is read into one 256 KiB buffer shared by all connections and
 * each read is sent back at once from it, so the bytes are still in the
 * cache when they go out and an idle connection holds no buffer; only what
 * the socket does not take is copied to a per-connection backlog, and only
 * then is EPOLLOUT registered (and reading paused: that is the back
 * pressure on a client that sends faster than it reads).  A read shorter
 * than the buffer means the socket is drained (epoll(7)), which saves the
 * read that would only say EAGAIN, unless EPOLLRDHUP says the peer
 * half-closed: then the end of the stream is read too, since a FIN that
 * arrives with the last data raises no edge of its own.  bench/README.md
 * has the measurements.
 *
 * With --file, each accepted connection is sent the whole file with
 * sendfile(2) and then closed (the sendfile workload); otherwise it echoes.
 * Prints "READY <address>" once listening (port 0 is resolved).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

#define BUF (256 * 1024)
#define MAX_READS 16                 /* per wakeup, for fairness */

struct conn {
    int fd;
    unsigned char want_out;          /* EPOLLOUT registered */
    unsigned char readable;          /* bytes may be waiting: no EAGAIN or
                                        short read seen since the last edge */
    unsigned char rdhup;             /* the peer has half-closed: read on
                                        to the end, a short read is not */
    unsigned char eof;               /* end read: close once the backlog is
                                        out */
    size_t out_len, out_off, out_cap;    /* unsent echo bytes in out[] */
    char *out;
    off_t file_off;                  /* sendfile mode */
};

static int epfd, lfd, file_fd = -1;
static off_t file_size;
static char rbuf[BUF];

static void die(const char *what)
{
    fprintf(stderr, "echo_epoll: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void conn_free(struct conn *c)
{
    close(c->fd);                    /* closing also drops it from epoll */
    free(c->out);
    free(c);
}

static void set_events(struct conn *c, int out)
{
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET | (out ? EPOLLOUT : 0),
                             .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = (unsigned char)out;
}

/* Returns 0 when drained, 1 when blocked, -1 on error. */
static int flush_backlog(struct conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off,
                         MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return errno == EAGAIN ? 1 : -1;
        c->out_off += (size_t)w;
    }
    c->out_off = c->out_len = 0;
    return 0;
}

static int backlog(struct conn *c, const char *p, size_t n)
{
    if (n > c->out_cap) {
        char *q = realloc(c->out, n);
        if (!q)
            return -1;
        c->out = q;
        c->out_cap = n;
    }
    memcpy(c->out, p, n);
    c->out_len = n;
    c->out_off = 0;
    return 0;
}

static int send_file_part(struct conn *c)
{
    while (c->file_off < file_size) {
        ssize_t w = sendfile(c->fd, file_fd, &c->file_off,
                             (size_t)(file_size - c->file_off));
        if (w < 0)
            return errno == EAGAIN ? 1 : -1;
        if (w == 0)
            return -1;
    }
    return 0;
}

/* Read and echo until drained, blocked on output, or out of budget.
 * Returns -1 when the connection was freed. */
static int on_readable(struct conn *c)
{
    for (int i = 0; i < MAX_READS; i++) {
        ssize_t r = recv(c->fd, rbuf, BUF, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                goto gone;
            c->readable = 0;
            return 0;
        }
        if (r == 0) {
            c->readable = 0;
            c->eof = 1;
            if (c->out_len == 0)
                goto gone;
            return 0;
        }
        if (file_fd >= 0)
            continue;                /* sendfile mode ignores input */
        ssize_t w = send(c->fd, rbuf, (size_t)r, MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN)
            goto gone;
        if (w < 0)
            w = 0;
        if (w < r) {
            /* The socket is full: keep the rest, wait for EPOLLOUT, and
             * read no more until it is out. */
            if (backlog(c, rbuf + w, (size_t)(r - w)) < 0)
                goto gone;
            set_events(c, 1);
            return 0;
        }
        if (r < BUF && !c->rdhup) {
            c->readable = 0;         /* short read: drained */
            return 0;
        }
    }
    /* Budget spent with bytes left: the edge will not come again, but a
     * MOD re-arms it while the socket is readable. */
    set_events(c, c->want_out);
    return 0;
gone:
    conn_free(c);
    return -1;
}

/* Returns -1 when the connection was freed. */
static int on_writable(struct conn *c)
{
    if (file_fd >= 0) {
        int rc = send_file_part(c);
        if (rc != 1)
            conn_free(c);            /* error, or the whole file is out */
        return rc == 1 ? 0 : -1;
    }
    int rc = flush_backlog(c);
    if (rc < 0) {
        conn_free(c);
        return -1;
    }
    if (rc == 1)
        return 0;
    set_events(c, 0);
    if (c->eof) {
        conn_free(c);
        return -1;
    }
    /* Bytes that came while the backlog waited raised no new edge. */
    return c->readable ? on_readable(c) : 0;
}

static void on_accept(void)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return;
            if (errno == EMFILE || errno == ENFILE) {
                /* Out of fds: leave the rest queued; ET fires on the next
                 * connection.  Not worth the reserved-fd trick here. */
                return;
            }
            continue;                /* ECONNABORTED and friends */
        }
        struct conn *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        c->fd = fd;
        c->readable = 1;             /* bytes may have come before the ADD */
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.ptr = c};
        if (file_fd >= 0) {
            ev.events |= EPOLLOUT;
            c->want_out = 1;
        }
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
            close(fd);
            free(c);
            continue;
        }
        if (file_fd >= 0)
            (void)on_writable(c);
    }
}

int main(int argc, char **argv)
{
    const char *addr = NULL, *file = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--addr"))
            addr = argv[i + 1];
        else if (!strcmp(argv[i], "--file"))
            file = argv[i + 1];
    }
    if (!addr) {
        fprintf(stderr, "usage: echo_epoll --addr ADDR [--file F]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    fs_raise_nofile();
    if (file) {
        struct stat st;
        file_fd = open(file, O_RDONLY | O_CLOEXEC);
        if (file_fd < 0 || fstat(file_fd, &st) < 0)
            die(file);
        file_size = st.st_size;
    }
    char shown[300];
    /* Deep backlog: the load generator opens hundreds of connections at
     * once and a dropped SYN costs a 1 s retransmit. */
    lfd = fs_listen_spec(addr, SOCK_NONBLOCK, 4096, shown, sizeof shown);
    if (lfd < 0) {
        fprintf(stderr, "echo_epoll: %s: %s\n", addr, strerror(-lfd));
        return 2;
    }
    if (!strncmp(shown, "tcp:", 4)) {
        /* Accepted sockets inherit TCP_NODELAY from the listener: one
         * setsockopt here instead of one per connection. */
        int one = 1;
        setsockopt(lfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);
    printf("READY %s\n", shown);
    fflush(stdout);

    struct epoll_event evs[512];
    for (;;) {
        int n = epoll_wait(epfd, evs, 512, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c) {
                on_accept();
                continue;
            }
            uint32_t e = evs[i].events;
            if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                c->readable = 1;     /* the read says what it was */
            /* A FIN that came with the data raises no edge of its own. */
            if (e & (EPOLLRDHUP | EPOLLHUP))
                c->rdhup = 1;
            /* Write first: a drained backlog lets the read proceed. */
            if (e & EPOLLOUT) {
                if (on_writable(c) < 0)
                    continue;
            }
            if (c->readable && !c->out_len && !c->eof)
                on_readable(c);
        }
    }
}
