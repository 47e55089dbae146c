# cython: language_level=3
"""Socket addresses: kernel sockaddr <-> Python tuples and paths."""

import operator
import os
import socket

from libc.string cimport memset, memcpy, strlen

from fastsock.system cimport *

cdef extern from "<arpa/inet.h>" nogil:
    const char *inet_ntop(int af, const void *src, char *dst, socklen_t size)
    int inet_pton(int af, const char *src, void *dst)
    unsigned short ntohs(unsigned short)
    unsigned short htons(unsigned short)
    unsigned int ntohl(unsigned int)
    unsigned int htonl(unsigned int)

cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        unsigned int s_addr
    struct in6_addr:
        pass
    struct sockaddr_in:
        sa_family_t sin_family
        unsigned short sin_port
        in_addr sin_addr
    struct sockaddr_in6:
        sa_family_t sin6_family
        unsigned short sin6_port
        unsigned int sin6_flowinfo
        in6_addr sin6_addr
        unsigned int sin6_scope_id
    enum:
        INADDR_ANY
        INADDR_BROADCAST

cdef extern from "<sys/un.h>" nogil:
    struct sockaddr_un:
        sa_family_t sun_family
        char sun_path[108]

cdef Py_ssize_t SUN_PATH_OFFSET = 2        # offsetof(sockaddr_un, sun_path)
cdef Py_ssize_t SUN_PATH_MAX = 108


cdef object sockaddr_to_py(sockaddr *addr, socklen_t addrlen):
    cdef char text[64]
    cdef Py_ssize_t pathlen
    cdef sockaddr_in *a4
    cdef sockaddr_in6 *a6
    cdef sockaddr_un *au
    if addrlen == 0:
        return None
    if addr.sa_family == AF_INET:
        a4 = <sockaddr_in *>addr
        inet_ntop(AF_INET, &a4.sin_addr, text, sizeof(text))
        return (text.decode(), ntohs(a4.sin_port))
    if addr.sa_family == AF_INET6:
        a6 = <sockaddr_in6 *>addr
        inet_ntop(AF_INET6, &a6.sin6_addr, text, sizeof(text))
        return (text.decode(), ntohs(a6.sin6_port),
                ntohl(a6.sin6_flowinfo), a6.sin6_scope_id)
    if addr.sa_family == AF_UNIX:
        au = <sockaddr_un *>addr
        pathlen = addrlen - SUN_PATH_OFFSET
        if pathlen <= 0:
            return ''                   # unnamed socket
        if au.sun_path[0] == 0:
            return au.sun_path[:pathlen]   # abstract name: bytes
        return os.fsdecode(au.sun_path[:strlen(au.sun_path)])
    return None


cdef int py_to_sockaddr(int family, object address, sockaddr_storage *out,
                        socklen_t *outlen) except -1:
    memset(out, 0, sizeof(sockaddr_storage))
    if family == AF_UNIX:
        return unix_address(address, <sockaddr_un *>out, outlen)
    if family == AF_INET:
        return inet_address(address, <sockaddr_in *>out, outlen)
    if family == AF_INET6:
        return inet6_address(address, <sockaddr_in6 *>out, outlen)
    return 0


cdef int unix_address(object address, sockaddr_un *out,
                      socklen_t *outlen) except -1:
    cdef bytes path
    if isinstance(address, str):
        path = os.fsencode(address)
    elif isinstance(address, (bytes, bytearray, memoryview)):
        path = bytes(address)
    else:
        raise TypeError("a bytes-like object is required, not "
                        f"'{type(address).__name__}'")
    # A path gets its terminating NUL; an abstract name (leading NUL) is
    # exactly its bytes.
    if len(path) > SUN_PATH_MAX or (path[:1] != b"\0"
                                    and len(path) == SUN_PATH_MAX):
        raise OSError("AF_UNIX path too long")
    out.sun_family = AF_UNIX
    memcpy(out.sun_path, <char *>path, len(path))
    outlen[0] = <socklen_t>(SUN_PATH_OFFSET + len(path))
    return 1


cdef object host_port(str family_name, object address, Py_ssize_t most):
    if not isinstance(address, tuple):
        raise TypeError(f"{family_name} address must be tuple, not "
                        f"{type(address).__name__}")
    if not 2 <= len(address) <= most:
        raise TypeError(f"{family_name} address must be a tuple of 2"
                        + ("" if most == 2 else f" to {most}") + " items")
    host, port = address[0], address[1]
    if isinstance(host, (bytes, bytearray)):
        host = bytes(host).decode("idna")
    elif not isinstance(host, str):
        raise TypeError(f"str, bytes or bytearray expected, not "
                        f"{type(host).__name__}")
    port = operator.index(port)
    if not 0 <= port <= 0xffff:
        raise OverflowError("port must be 0-65535.")
    return host, port


cdef int inet_address(object address, sockaddr_in *out,
                      socklen_t *outlen) except -1:
    host, port = host_port("AF_INET", address, 2)
    out.sin_family = AF_INET
    out.sin_port = htons(<unsigned short>port)
    outlen[0] = sizeof(sockaddr_in)
    if host == "":
        out.sin_addr.s_addr = htonl(INADDR_ANY)
    elif host == "<broadcast>" or host == "255.255.255.255":
        out.sin_addr.s_addr = htonl(INADDR_BROADCAST)
    elif inet_pton(AF_INET, host.encode(), &out.sin_addr) != 1:
        # A name: resolve it the way the socket module does.
        info = socket.getaddrinfo(host, port, socket.AF_INET)
        inet_pton(AF_INET, info[0][4][0].encode(), &out.sin_addr)
    return 1


cdef int inet6_address(object address, sockaddr_in6 *out,
                       socklen_t *outlen) except -1:
    host, port = host_port("AF_INET6", address, 4)
    # The socket module reads both as C unsigned ints without an overflow
    # check (the "I" format: the value is taken modulo 2**32), then checks
    # only the flow label's 20 bits.
    flowinfo = operator.index(address[2]) & 0xffffffff if len(address) > 2 else 0
    scope_id = operator.index(address[3]) & 0xffffffff if len(address) > 3 else 0
    if flowinfo > 0xfffff:
        raise OverflowError("flowinfo must be 0-1048575.")
    out.sin6_family = AF_INET6
    out.sin6_port = htons(<unsigned short>port)
    out.sin6_flowinfo = htonl(<unsigned int>flowinfo)
    out.sin6_scope_id = <unsigned int>scope_id
    outlen[0] = sizeof(sockaddr_in6)
    if host == "":
        return 1                        # in6addr_any: all zeros
    if inet_pton(AF_INET6, host.encode(), &out.sin6_addr) != 1:
        # A name, or a literal with a %scope: let getaddrinfo spell it.
        info = socket.getaddrinfo(host, port, socket.AF_INET6)
        resolved = info[0][4]
        inet_pton(AF_INET6, resolved[0].encode(), &out.sin6_addr)
        if not scope_id:
            out.sin6_scope_id = <unsigned int>resolved[3]
    return 1


def to_sockaddr(int family, address):
    """The kernel's bytes for `address` (None for other families); for tests."""
    cdef sockaddr_storage ss
    cdef socklen_t n = 0
    if not py_to_sockaddr(family, address, &ss, &n):
        return None
    return (<char *>&ss)[:n]


def from_sockaddr(bytes raw):
    """The Python spelling of kernel sockaddr bytes; for tests."""
    cdef sockaddr_storage ss
    memset(&ss, 0, sizeof(ss))
    memcpy(&ss, <char *>raw, min(len(raw), sizeof(ss)))
    return sockaddr_to_py(<sockaddr *>&ss, <socklen_t>len(raw))


cdef object local_address(int fd):
    """The socket's own address, as getsockname() gives it (None if the
    kernel has none)."""
    cdef sockaddr_storage ss
    cdef socklen_t n = sizeof(ss)
    memset(&ss, 0, sizeof(ss))
    if getsockname(fd, <sockaddr *>&ss, &n) < 0:
        return None
    return sockaddr_to_py(<sockaddr *>&ss, n)


cdef object peer_address(int fd, int family):
    """The peer's address of a connected socket, as getpeername() gives it.

    A TCP peer that reset the connection before it was accepted leaves a
    socket whose getpeername() fails with ENOTCONN, yet accept() returned its
    address: the kernel still has it, and SO_PEERNAME (unlike getpeername)
    reads it whatever the connection's state. The option wants a buffer no
    larger than the address itself. None when there is no peer."""
    cdef sockaddr_storage ss
    cdef socklen_t n = sizeof(ss)
    memset(&ss, 0, sizeof(ss))
    if getpeername(fd, <sockaddr *>&ss, &n) == 0:
        return sockaddr_to_py(<sockaddr *>&ss, n)
    if family == AF_INET:
        n = sizeof(sockaddr_in)
    elif family == AF_INET6:
        n = sizeof(sockaddr_in6)
    else:
        return None
    memset(&ss, 0, sizeof(ss))
    if getsockopt(fd, SOL_SOCKET, SO_PEERNAME, &ss, &n) < 0:
        return None
    return sockaddr_to_py(<sockaddr *>&ss, n)
