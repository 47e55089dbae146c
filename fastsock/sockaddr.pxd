# Socket addresses between Python's spelling and the kernel's: what an
# io_uring operation or a sendmsg(2) needs, without going through a socket
# object.

from fastsock.system cimport sockaddr, sockaddr_storage, socklen_t

# The address as Python's socket module spells it (None when unknown).
cdef object sockaddr_to_py(sockaddr *addr, socklen_t addrlen)

# Fill `out` with `address` for a socket of `family`, as socket.sendto() and
# socket.connect() would (same exceptions; host names resolved with
# getaddrinfo, blocking, like they do). Returns 1, or 0 for a family this
# module does not handle (the caller goes through the socket object).
cdef int py_to_sockaddr(int family, object address, sockaddr_storage *out,
                        socklen_t *outlen) except -1

# The socket's own and its peer's address, as getsockname()/getpeername()
# give them (None when there is none); the peer's also after a TCP reset.
cdef object local_address(int fd)
cdef object peer_address(int fd, int family)
