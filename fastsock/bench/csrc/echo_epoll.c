/*
 * echo_epoll: the plain C readiness server that `fastsock bench` uses as the
 * limit for the epoll model.  Edge-triggered epoll, nonblocking sockets,
 * accept4 in a loop, read until EAGAIN, write at once, EPOLLOUT only while a
 * backlog remains (the same rules the Python epoll driver follows).
 *
 *   echo_epoll --addr tcp:HOST:PORT|unix:PATH|unix:@NAME [--file F]
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

#define BUF (64 * 1024)
#define MAX_READS 16                 /* per wakeup, for fairness */

struct conn {
    int fd;
    int want_out;
    size_t out_len, out_off;         /* unsent echo bytes in out[] */
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

static void set_out(struct conn *c, int on)
{
    if (c->want_out == on)
        return;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET | (on ? EPOLLOUT : 0),
                             .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = on;
}

/* Returns 0 when drained, 1 when blocked, -1 on error. */
static int flush_backlog(struct conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off,
                         MSG_NOSIGNAL);
        if (w < 0)
            return errno == EAGAIN ? 1 : -1;
        c->out_off += (size_t)w;
    }
    c->out_off = c->out_len = 0;
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

/* Returns -1 when the connection was freed. */
static int on_writable(struct conn *c)
{
    int rc = file_fd >= 0 ? send_file_part(c) : flush_backlog(c);
    if (rc < 0 || (rc == 0 && file_fd >= 0)) {
        conn_free(c);                /* error, or the whole file is out */
        return -1;
    }
    if (rc == 0)
        set_out(c, 0);
    return 0;
}

static void on_readable(struct conn *c)
{
    /* While a backlog waits for EPOLLOUT we stop reading: that is what
     * pushes back on a client that sends faster than it reads. */
    if (c->out_len)
        return;
    for (int i = 0; i < MAX_READS; i++) {
        ssize_t r = recv(c->fd, rbuf, BUF, 0);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
            conn_free(c);
            return;
        }
        if (r < 0)
            return;
        if (file_fd >= 0)
            continue;                /* sendfile mode ignores input */
        ssize_t w = send(c->fd, rbuf, (size_t)r, MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN) {
            conn_free(c);
            return;
        }
        if (w < 0)
            w = 0;
        if (w < r) {
            size_t left = (size_t)(r - w);
            c->out = realloc(c->out, left);
            memcpy(c->out, rbuf + w, left);
            c->out_len = left;
            c->out_off = 0;
            set_out(c, 1);
            return;
        }
        if (r < BUF)
            return;                  /* short read: the socket is drained */
    }
    /* Budget spent with data left: ET will not tell us again, so rearm. */
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET | (c->want_out ? EPOLLOUT : 0),
                             .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
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
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        c->fd = fd;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.ptr = c};
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
            if (e & (EPOLLERR | EPOLLHUP) && !(e & EPOLLIN)) {
                conn_free(c);
                continue;
            }
            /* Write first: a drained backlog lets the read below proceed. */
            if ((e & EPOLLOUT) && on_writable(c) < 0)
                continue;
            if (e & (EPOLLIN | EPOLLHUP | EPOLLERR))
                on_readable(c);
        }
    }
}
