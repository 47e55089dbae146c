/*
 * Shared by the C echo servers: address parsing and the listening socket.
 * Included with #include, never compiled alone; it is a .c file so that the
 * package data glob for bench/csrc .c files ships it with the servers.
 *
 * Addresses: tcp:HOST:PORT (PORT may be 0), unix:/path, unix:@abstract.
 */
#include <errno.h>
#include <netdb.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void net_fail(const char *what, const char *detail)
{
    fprintf(stderr, "%s: %s\n", what, detail);
    exit(2);
}

/* Bind and listen; writes the bound address (with the real port) to shown. */
static int listen_on(const char *addr, int nonblock, char *shown, size_t shown_len)
{
    int fd, flags = SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0);
    if (!strncmp(addr, "unix:", 5)) {
        struct sockaddr_un un = {.sun_family = AF_UNIX};
        const char *path = addr + 5;
        size_t n = strlen(path);
        socklen_t len;
        if (n == 0 || n >= sizeof un.sun_path)
            net_fail(addr, "bad unix path");
        memcpy(un.sun_path, path, n);
        if (path[0] == '@') {
            un.sun_path[0] = '\0';       /* abstract name: length, no NUL */
            len = offsetof(struct sockaddr_un, sun_path) + n;
        } else {
            unlink(path);                /* a stale socket file from a crash */
            len = sizeof un;
        }
        fd = socket(AF_UNIX, flags, 0);
        if (fd < 0 || bind(fd, (struct sockaddr *)&un, len) < 0)
            net_fail(addr, strerror(errno));
        snprintf(shown, shown_len, "%s", addr);
    } else if (!strncmp(addr, "tcp:", 4)) {
        char host[256];
        const char *colon = strrchr(addr + 4, ':');
        if (!colon || (size_t)(colon - addr - 4) >= sizeof host)
            net_fail(addr, "expected tcp:HOST:PORT");
        memcpy(host, addr + 4, colon - addr - 4);
        host[colon - addr - 4] = '\0';
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai;
        int rc = getaddrinfo(host, colon + 1, &hints, &ai);
        if (rc)
            net_fail(addr, gai_strerror(rc));
        fd = socket(ai->ai_family, flags, 0);
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) < 0)
            net_fail(addr, strerror(errno));
        freeaddrinfo(ai);
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        getsockname(fd, (struct sockaddr *)&ss, &sl);
        char h[128], p[16];
        getnameinfo((struct sockaddr *)&ss, sl, h, sizeof h, p, sizeof p,
                    NI_NUMERICHOST | NI_NUMERICSERV);
        snprintf(shown, shown_len, "tcp:%s:%s", h, p);
    } else {
        net_fail(addr, "address must be tcp:HOST:PORT or unix:PATH");
        return -1;
    }
    /* Deep backlog: the load generator opens hundreds of connections at
     * once and a dropped SYN costs a 1 s retransmit. */
    if (listen(fd, 4096) < 0)
        net_fail(addr, strerror(errno));
    return fd;
}
