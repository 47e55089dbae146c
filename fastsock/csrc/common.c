/*
 * C helpers shared by the extension and the bench's C programs; see common.h
 * for the contract.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "common.h"

#include <errno.h>
#include <netdb.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/un.h>
#include <unistd.h>

/* ---- addresses --------------------------------------------------------- */

static int parse_unix(const char *path, struct fs_addr *out)
{
    struct sockaddr_un *un = (struct sockaddr_un *)&out->ss;
    size_t n = strlen(path);
    if (n == 0)
        return -EINVAL;
    if (n >= sizeof un->sun_path)
        return -ENAMETOOLONG;
    un->sun_family = AF_UNIX;
    memcpy(un->sun_path, path, n);
    if (path[0] == '@') {
        /* Abstract name: the length says where it ends, no NUL. */
        un->sun_path[0] = '\0';
        out->len = offsetof(struct sockaddr_un, sun_path) + n;
    } else {
        out->len = sizeof *un;
    }
    out->type = SOCK_STREAM;
    return 0;
}

static int parse_inet(const char *hostport, int type, int flags,
                      struct fs_addr *out)
{
    char host[256];
    const char *colon = strrchr(hostport, ':');
    if (!colon || colon[1] == '\0')
        return -EINVAL;
    size_t n = (size_t)(colon - hostport);
    if (n >= sizeof host)
        return -ENAMETOOLONG;
    memcpy(host, hostport, n);
    host[n] = '\0';
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {   /* [::1] */
        memmove(host, host + 1, n - 2);
        host[n - 2] = '\0';
    }
    struct addrinfo hints = {.ai_socktype = type}, *ai;
    if (flags & FS_ADDR_PASSIVE)
        hints.ai_flags = AI_PASSIVE;
    int rc = getaddrinfo(host[0] ? host : NULL, colon + 1, &hints, &ai);
    if (rc == EAI_MEMORY)
        return -ENOMEM;
    if (rc == EAI_SYSTEM)
        return errno ? -errno : -EADDRNOTAVAIL;
    if (rc)
        return -EADDRNOTAVAIL;
    memcpy(&out->ss, ai->ai_addr, ai->ai_addrlen);
    out->len = ai->ai_addrlen;
    out->type = type;
    freeaddrinfo(ai);
    return 0;
}

int fs_addr_parse(const char *spec, int flags, struct fs_addr *out)
{
    memset(out, 0, sizeof *out);
    if (!strncmp(spec, "unix:", 5))
        return parse_unix(spec + 5, out);
    if (!strncmp(spec, "tcp:", 4))
        return parse_inet(spec + 4, SOCK_STREAM, flags, out);
    if (!strncmp(spec, "udp:", 4))
        return parse_inet(spec + 4, SOCK_DGRAM, flags, out);
    return -EINVAL;
}

int fs_addr_local(int fd, char *buf, size_t buflen)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    int type;
    socklen_t tl = sizeof type;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0 ||
        getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) < 0)
        return -errno;
    if (ss.ss_family == AF_UNIX) {
        struct sockaddr_un *un = (struct sockaddr_un *)&ss;
        size_t n = sl - offsetof(struct sockaddr_un, sun_path);
        if (n > 0 && un->sun_path[0] == '\0')          /* abstract */
            snprintf(buf, buflen, "unix:@%.*s", (int)(n - 1), un->sun_path + 1);
        else
            snprintf(buf, buflen, "unix:%s", un->sun_path);
        return 0;
    }
    char h[NI_MAXHOST], p[NI_MAXSERV];
    if (getnameinfo((struct sockaddr *)&ss, sl, h, sizeof h, p, sizeof p,
                    NI_NUMERICHOST | NI_NUMERICSERV))
        return -EINVAL;
    snprintf(buf, buflen, "%s:%s:%s", type == SOCK_DGRAM ? "udp" : "tcp", h, p);
    return 0;
}

int fs_listen(const struct fs_addr *a, int sock_flags, int backlog)
{
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | sock_flags, 0);
    if (fd < 0)
        return -errno;
    if (a->ss.ss_family == AF_UNIX) {
        const struct sockaddr_un *un = (const struct sockaddr_un *)&a->ss;
        if (un->sun_path[0])
            unlink(un->sun_path);    /* a stale socket file from a crash */
    } else {
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    }
    if (bind(fd, (const struct sockaddr *)&a->ss, a->len) < 0 ||
        listen(fd, backlog) < 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    return fd;
}

int fs_listen_spec(const char *spec, int sock_flags, int backlog,
                   char *shown, size_t shownlen)
{
    struct fs_addr a;
    int rc = fs_addr_parse(spec, FS_ADDR_PASSIVE, &a);
    if (rc < 0)
        return rc;
    if (a.type != SOCK_STREAM)
        return -EPROTOTYPE;
    int fd = fs_listen(&a, sock_flags, backlog);
    if (fd < 0)
        return fd;
    rc = fs_addr_local(fd, shown, shownlen);
    if (rc < 0) {
        close(fd);
        return rc;
    }
    return fd;
}

long fs_raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return -errno;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            return -errno;
    }
    return (long)rl.rlim_cur;
}

/* ---- io_uring ---------------------------------------------------------- */

#ifdef HAVE_LIBURING
#include <sys/mman.h>

/* SINGLE_ISSUER | DEFER_TASKRUN (6.1): completions run only inside
 * io_uring_enter, in one batch, instead of interrupting the task per packet.
 * COOP_TASKRUN (5.19): at least no interrupt for task work, and
 * TASKRUN_FLAG so that liburing sees pending task work when it peeks.  Then
 * plain. */
const unsigned FS_URING_LADDER[3] = {
    IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
    IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
    0,
};

int fs_uring_init(unsigned entries, struct io_uring *ring,
                  struct io_uring_params *p, const unsigned *rungs,
                  unsigned nrungs)
{
    if (!rungs) {
        rungs = FS_URING_LADDER;
        nrungs = sizeof FS_URING_LADDER / sizeof FS_URING_LADDER[0];
    }
    struct io_uring_params want = *p;
    int rc = -EINVAL;
    for (unsigned i = 0; i < nrungs; i++) {
        *p = want;
        p->flags |= rungs[i];
        rc = io_uring_queue_init_params(entries, ring, p);
        if (rc != -EINVAL)
            break;
    }
    return rc;
}

/* struct io_uring_buf_reg as the kernel has it since 6.12: liburing 2.3
 * calls the flags field "pad".  Same layout, so it is passed in its place. */
struct fs_buf_reg {
    uint64_t ring_addr;
    uint32_t ring_entries;
    uint16_t bgid;
    uint16_t flags;
    uint64_t resv[3];
};
_Static_assert(sizeof(struct fs_buf_reg) == sizeof(struct io_uring_buf_reg),
               "io_uring_buf_reg layout");

struct io_uring_buf_ring *fs_setup_buf_ring(struct io_uring *ring,
                                            unsigned nentries, int bgid,
                                            unsigned flags, int *err)
{
    size_t bytes = (size_t)nentries * sizeof(struct io_uring_buf);
    /* mmap: the ring must be page aligned. */
    void *mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                     MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (mem == MAP_FAILED) {
        *err = -errno;
        return NULL;
    }
    struct io_uring_buf_ring *br = mem;
    io_uring_buf_ring_init(br);
    struct fs_buf_reg reg = {
        .ring_addr = (uintptr_t)mem, .ring_entries = nentries,
        .bgid = (uint16_t)bgid, .flags = (uint16_t)flags};
    int rc = io_uring_register_buf_ring(ring, (struct io_uring_buf_reg *)&reg, 0);
    if (rc < 0) {
        munmap(mem, bytes);
        *err = rc;
        return NULL;
    }
    *err = 0;
    return br;
}

int fs_free_buf_ring(struct io_uring *ring, struct io_uring_buf_ring *br,
                     unsigned nentries, int bgid)
{
    int rc = io_uring_unregister_buf_ring(ring, bgid);
    munmap(br, (size_t)nentries * sizeof(struct io_uring_buf));
    return rc < 0 ? rc : 0;
}
#endif /* HAVE_LIBURING */
