/*
 * An independent ping-pong client, for checking the numbers of fastsock's
 * load generator (fastsock/bench/csrc/loadgen.c).  Deliberately built the
 * other way round: poll(2) instead of epoll, no warm-up phase, no timestamps
 * per message, no histogram, a fixed message; it only counts completed round
 * trips over a wall-clock window and checks each echo.
 *
 *   independent_client tcp:HOST:PORT|unix:PATH CONNS SIZE SECONDS
 * prints: {"rps": ..., "requests": ..., "seconds": ..., "errors": ...}
 */
#define _GNU_SOURCE
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static const char *addr;
static size_t size;
static atomic_long errors;

static int dial(void)
{
    int fd;
    if (!strncmp(addr, "unix:", 5)) {
        struct sockaddr_un un = {.sun_family = AF_UNIX};
        strncpy(un.sun_path, addr + 5, sizeof un.sun_path - 1);
        fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&un, sizeof un) < 0)
            return -1;
    } else {
        char host[64];
        const char *colon = strrchr(addr + 4, ':');
        snprintf(host, sizeof host, "%.*s", (int)(colon - addr - 4), addr + 4);
        struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons(atoi(colon + 1))};
        inet_pton(AF_INET, host, &in.sin_addr);
        fd = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(fd, (struct sockaddr *)&in, sizeof in) < 0)
            return -1;
    }
    return fd;
}

/* One thread, poll(2), a state machine per connection: send SIZE bytes,
 * read SIZE bytes back, compare, repeat. */
struct c { int fd; size_t sent, got; long n; };

static void run(int conns, double secs, long *reqs, double *elapsed)
{
    struct c *cs = calloc(conns, sizeof *cs);
    struct pollfd *pf = calloc(conns, sizeof *pf);
    char *out = malloc(size), *in = malloc(size);
    for (int i = 0; i < conns; i++) {
        cs[i].fd = dial();
        if (cs[i].fd < 0) {
            perror("connect");
            exit(3);
        }
        fcntl(cs[i].fd, F_SETFL, O_NONBLOCK);
        pf[i].fd = cs[i].fd;
    }
    memset(out, 'q', size);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    double now = 0;
    long total = 0;
    while (now < secs) {
        for (int i = 0; i < conns; i++) {
            struct c *c = &cs[i];
            if (c->sent < size) {
                ssize_t w = write(c->fd, out + c->sent, size - c->sent);
                if (w > 0)
                    c->sent += (size_t)w;
            }
            pf[i].events = c->sent < size ? POLLOUT : POLLIN;
        }
        if (poll(pf, conns, 100) < 0)
            break;
        for (int i = 0; i < conns; i++) {
            struct c *c = &cs[i];
            if (!(pf[i].revents & POLLIN))
                continue;
            ssize_t r = read(c->fd, in, size - c->got);
            if (r <= 0)
                continue;
            if (memcmp(in, out, (size_t)r))
                atomic_fetch_add(&errors, 1);
            c->got += (size_t)r;
            if (c->got == size) {
                c->got = c->sent = 0;
                total++;
            }
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
        now = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9;
    }
    *reqs = total;
    *elapsed = now;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s ADDR CONNS SIZE SECONDS\n", argv[0]);
        return 2;
    }
    addr = argv[1];
    int conns = atoi(argv[2]);
    size = strtoul(argv[3], NULL, 10);
    long reqs;
    double el;
    run(conns, atof(argv[4]), &reqs, &el);
    printf("{\"rps\": %.1f, \"requests\": %ld, \"seconds\": %.3f, \"errors\": %ld}\n",
           reqs / el, reqs, el, atomic_load(&errors));
    return 0;
}
