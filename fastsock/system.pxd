# System declarations shared by the drivers and transports. Declarations only.

from libc.stdint cimport uint32_t, uint64_t, int32_t


cdef extern from "<errno.h>" nogil:
    int errno
    enum:
        EAGAIN
        EWOULDBLOCK
        EINTR
        EINPROGRESS
        ENOBUFS
        ECANCELED
        ENOENT
        EALREADY
        ETIME
        EMFILE
        ENFILE
        ENOMEM
        ECONNABORTED
        EPERM
        ENOSYS
        EBADF
        EINVAL


cdef extern from "<unistd.h>" nogil:
    int close(int fd)
    ssize_t read(int fd, void *buf, size_t count)
    ssize_t write(int fd, const void *buf, size_t count)


cdef extern from "<fcntl.h>" nogil:
    enum:
        O_RDONLY
        O_CLOEXEC
    int open(const char *path, int flags)


cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t

    struct sockaddr:
        sa_family_t sa_family

    struct sockaddr_storage:
        sa_family_t ss_family

    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags

    enum:
        AF_UNSPEC
        AF_UNIX
        AF_INET
        AF_INET6
        SOCK_STREAM
        SOCK_DGRAM
        SOCK_NONBLOCK
        SOCK_CLOEXEC
        MSG_NOSIGNAL
        MSG_DONTWAIT
        MSG_TRUNC
        SHUT_WR
        SOL_SOCKET
        SO_ERROR
        SO_PEERNAME
        SO_DOMAIN

    struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type

    cmsghdr *CMSG_FIRSTHDR(msghdr *msg)
    cmsghdr *CMSG_NXTHDR(msghdr *msg, cmsghdr *cmsg)
    unsigned char *CMSG_DATA(cmsghdr *cmsg)

    enum:
        MSG_ERRQUEUE
        MSG_ZEROCOPY
        SO_ZEROCOPY

    ssize_t recv(int fd, void *buf, size_t n, int flags)
    ssize_t recvmsg(int fd, msghdr *msg, int flags)
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    ssize_t sendmsg(int fd, const msghdr *msg, int flags)
    ssize_t recvfrom(int fd, void *buf, size_t n, int flags,
                     sockaddr *addr, socklen_t *addrlen)
    ssize_t sendto(int fd, const void *buf, size_t n, int flags,
                   const sockaddr *addr, socklen_t addrlen)
    int accept4(int fd, sockaddr *addr, socklen_t *addrlen, int flags)
    int shutdown(int fd, int how)
    int connect(int fd, const sockaddr *addr, socklen_t addrlen)
    int getsockopt(int fd, int level, int name, void *val, socklen_t *len)
    int getsockname(int fd, sockaddr *addr, socklen_t *len)
    int getpeername(int fd, sockaddr *addr, socklen_t *len)
    int setsockopt(int fd, int level, int name, const void *val,
                   socklen_t len)


cdef extern from "<netinet/in.h>" nogil:
    enum:
        SOL_IP
        SOL_IPV6
        IP_RECVERR
        IPV6_RECVERR


cdef extern from "<linux/errqueue.h>" nogil:
    struct sock_extended_err:
        unsigned int ee_errno
        unsigned char ee_origin
        unsigned char ee_type
        unsigned char ee_code
        unsigned int ee_info
        unsigned int ee_data
    enum:
        SO_EE_ORIGIN_ZEROCOPY
        SO_EE_CODE_ZEROCOPY_COPIED


cdef extern from "<netinet/tcp.h>" nogil:
    enum:
        TCP_NODELAY

cdef extern from "<netinet/in.h>" nogil:
    enum:
        IPPROTO_TCP


cdef extern from "<sys/sendfile.h>" nogil:
    ssize_t sendfile(int out_fd, int in_fd, long *offset, size_t count)


cdef extern from *:
    # sendfile(2) moves at most this much per call
    enum:
        SENDFILE_MAX "0x7ffff000"


cdef extern from "<sys/epoll.h>" nogil:
    union epoll_data_t:
        void *ptr
        int fd
        uint32_t u32
        uint64_t u64

    struct epoll_event:
        uint32_t events
        epoll_data_t data

    enum:
        EPOLLIN
        EPOLLOUT
        EPOLLRDHUP
        EPOLLPRI
        EPOLLERR
        EPOLLHUP
        EPOLLET
        EPOLLONESHOT
        EPOLL_CTL_ADD
        EPOLL_CTL_MOD
        EPOLL_CTL_DEL
        EPOLL_CLOEXEC

    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)


cdef extern from "<sys/eventfd.h>" nogil:
    enum:
        EFD_NONBLOCK
        EFD_CLOEXEC
    int eventfd(unsigned int initval, int flags)


cdef extern from "<poll.h>" nogil:
    enum:
        POLLIN
        POLLOUT
        POLLERR
        POLLHUP
        POLLPRI
        POLLRDHUP
