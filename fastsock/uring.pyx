# cython: language_level=3
"""Completion driver: io_uring through liburing 2.3.

- One ring per loop, SINGLE_ISSUER | DEFER_TASKRUN where the kernel has them
  (else COOP_TASKRUN, else plain). With SINGLE_ISSUER the ring is created
  disabled and enabled by the first thread that submits: the loop's thread.
- SQEs queued during callbacks go to the kernel once per iteration in
  poll(), together with the wait (submit_and_wait with the timer timeout);
  what a caller needs in the kernel at once (a sock_* call, a send of an
  idle stream) is submitted at once.
- Streams read with multishot recv from a provided-buffer ring shared by the
  loop (registered by hand: liburing 2.3 has no io_uring_setup_buf_ring);
  each buffer goes back to the ring as soon as its bytes are handed on.
  A multishot whose CQE lacks IORING_CQE_F_MORE is re-armed (CQ full,
  ENOBUFS when the ring ran dry, ...). A bulk stream (one that fills whole
  buffers) is read by readiness instead: a multishot poll, then recv(2)
  into the bytes object its protocol gets (recv_done says why).
- Listeners use multishot accept; watchers are single-shot polls re-armed
  after each event, which gives the level-triggered behaviour add_reader
  promises.
- Sends are Requests (driver.pxd): a stream's gathered buffers as SENDMSG
  (or SENDMSG_ZC), a file as two splices through a pipe, datagrams as
  chains of linked SENDMSGs, the loop's sock_* calls as RECV, RECVMSG,
  SEND, SENDMSG, ACCEPT, CONNECT.
- UDP sockets read with multishot recvmsg from a second buffer ring whose
  buffers fit any UDP datagram; AF_UNIX datagram sockets with one RECVMSG
  at a time.
- Lifetime: an SQE's user_data names the object whose memory it points at,
  an Endpoint or a Request, and the driver holds that object until the
  SQE's last CQE: endpoints in `endpoints` (then `releasing`), Requests in
  `requests`. release() cancels with IORING_ASYNC_CANCEL_FD and calls
  on_released() once the last CQE for the fd is in.
"""

import fcntl
import os

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.bytearray cimport PyByteArray_AS_STRING
from libc.stdint cimport uint32_t, uint64_t

from fastsock.driver cimport *
from fastsock.system cimport *
from fastsock.liburing cimport *
from fastsock.ring cimport *
from fastsock.probe import probe, LIBURING_VERSION   # re-exported

cdef extern from "<errno.h>" nogil:
    enum:
        EOPNOTSUPP

# Request.stage: what the kernel does for a Request now.
cdef enum:
    STAGE_IDLE = 0
    STAGE_SEND = 1          # SENDMSG of a stream's buffers
    STAGE_SEND_ZC = 2       # SENDMSG_ZC of them
    STAGE_WAIT_OUT = 3      # POLLOUT: the socket was full
    STAGE_SPLICE_IN = 4     # file -> pipe
    STAGE_SPLICE_OUT = 5    # pipe -> socket
    STAGE_DATAGRAM = 6      # SENDMSG of a datagram (in a chain)
    STAGE_SOCK = 7          # a sock_* operation

# Endpoint.armed bits: endpoint operations in flight.
cdef enum:
    ARM_RECV = 1 << 0
    ARM_RECV_CANCEL = 1 << 1
    ARM_ACCEPT = 1 << 3
    ARM_POLL = 1 << 4
    ARM_POLL_CANCEL = 1 << 5
    ARM_POLL_IN = 1 << 6
    ARM_POLL_OUT = 1 << 7
    ARM_SEND_POLL = 1 << 8      # a datagram chain waits for room
    ARM_SEND_BLOCKED = 1 << 9   # a datagram chain met a full socket buffer
    ARM_RECV_BULK = 1 << 11     # stream: the armed "recv" is a bulk
                                # stream's multishot poll (bulk_read)
    ARM_QUIET_SHIFT = 24        # stream: small reads in a row (4 bits)
    ARM_QUIET_MASK = 15 << 24

cdef enum:
    DEFAULT_ENTRIES = 1024
    DEFAULT_CQ_ENTRIES = 16384
    DEFAULT_BUF_COUNT = 512
    DEFAULT_BUF_SIZE = 32 * 1024
    # A stream that fills whole buffers of the shared ring reads in bulk
    # until BULK_QUIET_RECVS reads in a row fit a shared-ring buffer again
    # (see recv_done); up to BULK_READS_PER_WAKEUP reads per poll CQE.
    BULK_QUIET_RECVS = 8
    BULK_READS_PER_WAKEUP = 8
    DGRAM_BUF_SIZE = 256 * 1024        # asyncio reads datagrams this large
    STREAM_GROUP = 0                   # provided-buffer groups
    DGRAM_GROUP = 1
    # UDP recvmsg buffers: header, address and the largest UDP payload fit,
    # so the kernel never truncates a datagram.
    DGRAM_BUF_COUNT = 64
    DGRAM_BUF_RING_SIZE = 65536 + 256
    DGRAM_CHAIN_MAX = 64               # datagrams linked in one chain
    REAP_ROUNDS = 8

cdef Py_ssize_t ADDR_SPACE = sizeof(sockaddr_storage)
# Kernel 6.2 flags liburing 2.3 does not name: ask SEND_ZC to report whether
# it copied, and the bit that says so in the notification's res.
cdef unsigned int SEND_ZC_REPORT_USAGE = 1 << 3
cdef unsigned int NOTIF_USAGE_ZC_COPIED = 1u << 31
cdef Py_ssize_t SPLICE_PIPE_SIZE = 1 << 20

# What the kernel never finished with when its ring was torn down: the
# memory it points at is never freed.
_stranded = []


cdef class SplicePipe:

    def __dealloc__(self):
        if self.rfd >= 0:
            close(self.rfd)
            close(self.wfd)
            self.rfd = self.wfd = -1


cdef class UringDriver(Driver):

    @staticmethod
    cdef UringDriver new(object loop, unsigned int entries,
                         unsigned int cq_entries, unsigned int buf_count,
                         unsigned int buf_size):
        cdef UringDriver self = UringDriver.__new__(UringDriver)
        self.name = "uring"
        self.loop = loop
        self.endpoints = {}
        self.parked = {}
        self.deferred = []
        self.rx = {}
        self.pipes = {}
        self.releasing = set()
        self.requests = set()
        self.counters = dict.fromkeys((
            'multishot_rearms', 'enobufs',
            'recv_cancels', 'send_eagain', 'accept_emfile',
            'sock_requests', 'datagram_sends', 'bulk_switches'), 0)
        self.wakefd = self.reserve_fd = self.check_epfd = -1
        self.buf_count = buf_count
        self.buf_size = buf_size
        try:
            self.ring = Ring.new(entries, cq_entries)
            self.has_send_zc = self.ring.supports(IORING_OP_SENDMSG_ZC)
            self.rbufs = BufferRing.new(self.ring, buf_count, buf_size,
                                        STREAM_GROUP)
            self.wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
            if self.wakefd < 0:
                raise OSError(errno, "eventfd failed")
            self.reserve_fd = open(b"/dev/null", O_RDONLY | O_CLOEXEC)
            self.arm_wake()
        except BaseException:
            self.close()
            raise
        return self

    cdef free_ring(self):
        if self.ring is not None:
            self.ring.exit()
        # After the ring's exit: the kernel no longer knows the buffers.
        self.rbufs = self.dbufs = None

    cdef int close(self) except -1:
        cdef Endpoint ep
        if self.closed:
            return 0
        self.closed = True
        # No kernel operation may outlive the memory it points at. Owners
        # are not called back: the loop is closed, and transports keep
        # owning their sockets, as in asyncio.
        if self.ring is not None and self.ring.ok:
            busy = self.inflight_endpoints()
            for ep in busy:
                if not ep.flags & EP_RELEASING:
                    ep.flags |= EP_RELEASING | EP_RELEASED
                ep.sending = None
            if not self.ring.enabled:
                pass        # never ran: nothing was submitted
            elif (self.ring.setup_flags & IORING_SETUP_SINGLE_ISSUER
                    and not self.ring.on_issuer_thread()):
                # Closed from another thread (a loop run in a worker thread,
                # closed by the main one): the ring takes neither
                # submissions nor waits from here. With DEFER_TASKRUN an
                # operation's work runs only in its issuer's io_uring_enter(),
                # which cannot happen once the ring's fd is closed: the
                # kernel's teardown (io_ring_exit_work) cancels whatever is
                # in flight from a kernel thread, where socket operations
                # waiting on readiness end without touching their buffers.
                # So: close the ring first, then let go of what it held.
                self.free_ring()
            elif busy or self.requests:
                # Cancel everything, collect the CQEs, then tear down.
                for req in self.requests:
                    if (<Request>req).op == REQ_SEND_ZC:
                        # zero-copy notices now, not after the peer's ack
                        self.reset_stream((<Request>req).ep)
                for ep in busy:
                    self.prep_cancel_fd(ep)
                for req in list(self.requests):
                    if (<Request>req).ep is None:
                        self.cancel_request(req)
                self.ring.submit()
                for _ in range(200):
                    self.wait_some(10)
                    if not self.inflight_endpoints() and not self.requests:
                        break
                # Whatever still has operations in flight is remembered
                # for good, and so is the buffer ring memory: the kernel
                # may still touch it while the ring goes away.
                stuck = self.inflight_endpoints()
                if stuck or self.requests:
                    _stranded.extend(stuck)
                    _stranded.extend(self.requests)
                    for bufs in (self.rbufs, self.dbufs):
                        if bufs is not None:
                            bufs.strand()
        self.free_ring()
        self.drop_all()
        for fd in (self.wakefd, self.reserve_fd, self.check_epfd):
            if fd >= 0:
                close(fd)
        self.wakefd = self.reserve_fd = self.check_epfd = -1
        return 0

    cdef int drop_all(self) except -1:
        # The ring is gone: nothing the kernel does refers to these now.
        self.endpoints.clear()
        self.releasing.clear()
        self.requests.clear()
        self.parked.clear()
        self.deferred.clear()
        self.rx.clear()
        self.pipes.clear()
        return 0

    def inflight_endpoints(self):
        eps = set(self.endpoints.values())
        eps.update(self.releasing)
        return [ep for ep in eps if (<Endpoint>ep).inflight]

    cdef int prep_cancel_fd(self, Endpoint ep) except -1:
        cdef io_uring_sqe *sqe = self.ring.get_sqe()
        io_uring_prep_cancel_fd(sqe, ep.fd, IORING_ASYNC_CANCEL_ALL)
        io_uring_sqe_set_data64(sqe, OP_IGNORE)
        return 0

    cdef int wait_some(self, long timeout_ms) except -1:
        # closing: collect what CQEs come, signals and errors left for later
        self.ring.wait(timeout_ms, False)
        return self.reap()

    # -- submission -----------------------------------------------------------

    cdef io_uring_sqe *op_sqe(self, Endpoint ep, int op) except NULL:
        # An endpoint operation: the endpoint is held by `endpoints` (then
        # `releasing`) until its last CQE, counted in ep.inflight.
        cdef io_uring_sqe *sqe = self.ring.get_sqe()
        io_uring_sqe_set_data64(sqe, tag(<void *>ep, op))
        ep.inflight += 1
        return sqe

    cdef io_uring_sqe *request_sqe(self, Request req, int stage) except NULL:
        # A Request's operation: `requests` holds it until its last CQE
        # (and, for a zero-copy send, its last notice).
        cdef io_uring_sqe *sqe = self.ring.get_sqe()
        io_uring_sqe_set_data64(sqe, tag(<void *>req, OP_REQUEST))
        req.stage = stage
        self.requests.add(req)
        if req.ep is not None:
            req.ep.inflight += 1
        return sqe

    cdef void wakeup(self) nogil:
        cdef uint64_t one = 1
        if self.wakefd >= 0:
            write(self.wakefd, &one, 8)

    cdef int arm_wake(self) except -1:
        cdef io_uring_sqe *sqe = self.ring.get_sqe()
        io_uring_prep_poll_multishot(sqe, self.wakefd, POLLIN)
        io_uring_sqe_set_data64(sqe, OP_WAKE)
        return 0

    # -- the contract -------------------------------------------------------------

    cdef int attach(self, Endpoint ep) except -1:
        cdef int domain = 0
        cdef socklen_t len = sizeof(domain)
        if ep.kind == KIND_DATAGRAM:
            getsockopt(ep.fd, SOL_SOCKET, SO_DOMAIN, &domain, &len)
            if domain == AF_INET or domain == AF_INET6:
                # A UDP datagram fits in one buffer of the datagram ring;
                # an AF_UNIX one may not (up to the socket buffer size), so
                # those keep a single RECVMSG into a 256 KiB buffer.
                ep.flags |= EP_MULTISHOT_DGRAM
        elif ep.kind == KIND_WATCHER:
            self.check_watchable(ep.fd)
        return 0

    cdef int check_watchable(self, int fd) except -1:
        # add_reader()/add_writer() refuse at once what a readiness loop's
        # epoll_ctl() refuses: a closed fd (EBADF), a file that cannot be
        # polled, such as a regular file (EPERM). A POLL_ADD would take
        # either and complete (a regular file is always "ready"). Asking
        # epoll itself gives exactly its answer.
        cdef epoll_event ev
        if self.check_epfd < 0:
            self.check_epfd = epoll_create1(EPOLL_CLOEXEC)
            if self.check_epfd < 0:
                raise OSError(errno, "epoll_create1 failed")
        ev.events = EPOLLIN
        ev.data.u64 = 0
        if epoll_ctl(self.check_epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
            raise OSError(errno, os.strerror(errno))
        epoll_ctl(self.check_epfd, EPOLL_CTL_DEL, fd, &ev)
        return 0

    cdef int start_reading(self, Endpoint ep) except -1:
        if ep.flags & (EP_READING | EP_RELEASING):
            return 0
        ep.flags |= EP_READING
        if ep in self.parked:
            # Bytes that came while paused go first, in the next iteration.
            return self.defer(ep)
        if ep.armed & ARM_RECV_BULK and not ep.armed & ARM_RECV_CANCEL:
            # A bulk stream's poll stayed armed through the pause (see
            # stop_reading); what it reported then was not read: read
            # from the next iteration on.
            return self.defer(ep)
        if ep.kind == KIND_LISTENER:
            return self.arm_accept(ep)
        return self.arm_recv(ep)

    cdef int stop_reading(self, Endpoint ep) except -1:
        if not ep.flags & EP_READING:
            return 0
        ep.flags &= ~EP_READING
        if ep.armed & ARM_RECV_BULK:
            # A poll takes nothing from the socket: leave it armed (a pause
            # and resume cost no SQEs) and ignore its CQEs until then.
            pass
        elif ep.armed & ARM_RECV:
            # Stop the multishot so the kernel keeps what comes (and applies
            # backpressure); CQEs already on their way are parked.
            self.cancel_op(ep, OP_RECV)
            self.counters['recv_cancels'] += 1
        elif ep.armed & ARM_ACCEPT:
            self.cancel_op(ep, OP_ACCEPT)
        return 0

    cdef int cancel_op(self, Endpoint ep, int op) except -1:
        cdef io_uring_sqe *sqe = self.ring.get_sqe()
        io_uring_prep_cancel64(sqe, tag(<void *>ep, op), 0)
        io_uring_sqe_set_data64(sqe, OP_IGNORE)
        if op == OP_RECV:
            ep.armed |= ARM_RECV_CANCEL
        elif op == OP_POLL:
            ep.armed |= ARM_POLL_CANCEL
        return 0

    cdef int arm_recv(self, Endpoint ep) except -1:
        cdef io_uring_sqe *sqe
        cdef bytearray space
        cdef char *base
        cdef Request req
        if ep.armed & ARM_RECV:
            return 0
        if ep.flags & EP_MULTISHOT_DGRAM:
            # Multishot recvmsg from the datagram buffer ring: each CQE is
            # one datagram (header, sender, payload in one buffer). The
            # msghdr only tells the kernel how much room the name gets.
            req = self.rx.get(ep)
            if req is None:
                req = Request.__new__(Request)
                req.msg.msg_namelen = <socklen_t>ADDR_SPACE
                self.rx[ep] = req
            self.datagram_buffers()
            sqe = self.op_sqe(ep, OP_RECV)
            io_uring_prep_recvmsg_multishot(sqe, ep.fd, &req.msg, 0)
            sqe.flags |= IOSQE_BUFFER_SELECT
            sqe.buf_group = DGRAM_GROUP
        elif ep.kind == KIND_DATAGRAM:
            # One recvmsg at a time into the endpoint's own buffer: the
            # sender's address comes with it.
            req = self.rx.get(ep)
            if req is None:
                req = Request.new(REQ_RECVMSG, ep.fd,
                                  bytearray(DGRAM_BUF_SIZE), True)
                self.rx[ep] = req
            req.msg.msg_namelen = req.namelen
            sqe = self.op_sqe(ep, OP_RECV)
            io_uring_prep_recvmsg(sqe, ep.fd, &req.msg, 0)
        elif ep.flags & EP_BULK:
            # A bulk stream: readiness, and bulk_read() does the recvs.
            sqe = self.op_sqe(ep, OP_RECV)
            io_uring_prep_poll_multishot(sqe, ep.fd, POLLIN | POLLRDHUP)
            ep.armed |= ARM_RECV_BULK
        else:
            sqe = self.op_sqe(ep, OP_RECV)
            io_uring_prep_recv_multishot(sqe, ep.fd, NULL, 0, 0)
            sqe.flags |= IOSQE_BUFFER_SELECT
            sqe.buf_group = STREAM_GROUP
        ep.armed |= ARM_RECV
        return 0

    cdef int arm_accept(self, Endpoint ep) except -1:
        cdef io_uring_sqe *sqe
        if ep.armed & ARM_ACCEPT:
            return 0
        sqe = self.op_sqe(ep, OP_ACCEPT)
        io_uring_prep_multishot_accept(sqe, ep.fd, NULL, NULL,
                                       SOCK_NONBLOCK | SOCK_CLOEXEC)
        ep.armed |= ARM_ACCEPT
        return 0

    # -- sending --------------------------------------------------------------

    cdef int datagram_queued(self, Endpoint ep) except -1:
        return self.submit_datagrams(ep)

    cdef int start_stream_send(self, Endpoint ep, Request req,
                               bint now) except -1:
        self.send_step(ep, req)
        if now:
            self.ring.submit()
        return 0

    cdef int send_step(self, Endpoint ep, Request req) except -1:
        # The next operation of a stream send: one at a time per Request,
        # and one Request at a time per stream, so bytes stay in order.
        cdef io_uring_sqe *sqe
        cdef SplicePipe pipe
        if req.op == REQ_SENDFILE:
            pipe = self.pipe_for(ep)
            if pipe.filled:
                # File bytes already in the pipe go first.
                sqe = self.request_sqe(req, STAGE_SPLICE_OUT)
                io_uring_prep_splice(sqe, pipe.rfd, -1, ep.fd, -1,
                                     <unsigned>pipe.filled, 0)
            else:
                sqe = self.request_sqe(req, STAGE_SPLICE_IN)
                io_uring_prep_splice(
                    sqe, req.file_fd, req.file_offset, pipe.wfd, -1,
                    <unsigned>min(req.size - req.done, pipe.size), 0)
        elif req.op == REQ_SEND_ZC and self.has_send_zc:
            # The first CQE says how much went out (the iovecs are free
            # again); the pages stay the kernel's until the F_NOTIF CQE.
            sqe = self.request_sqe(req, STAGE_SEND_ZC)
            io_uring_prep_sendmsg(sqe, ep.fd, &req.msg, MSG_NOSIGNAL)
            sqe.opcode = IORING_OP_SENDMSG_ZC
            sqe.ioprio |= SEND_ZC_REPORT_USAGE
        else:
            if req.op == REQ_SEND_ZC:
                req.zc_copied = True        # no SENDMSG_ZC here: copy
            sqe = self.request_sqe(req, STAGE_SEND)
            io_uring_prep_sendmsg(sqe, ep.fd, &req.msg, MSG_NOSIGNAL)
        return 0

    cdef int cancel_send(self, Endpoint ep, Request req) except -1:
        cdef io_uring_sqe *sqe
        if ep.sending is not req or req.cancelled:
            return 0
        req.cancelled = True
        if req.stage == STAGE_IDLE:
            return self.finish_send(ep, req, -ECANCELED)
        # Its CQE reports the cancel (or what completed first).
        sqe = self.ring.get_sqe()
        io_uring_prep_cancel64(sqe, tag(<void *>req, OP_REQUEST), 0)
        io_uring_sqe_set_data64(sqe, OP_IGNORE)
        return 0

    cdef int send_done(self, Request req, int res, uint32_t flags) except -1:
        cdef Endpoint ep = req.ep
        cdef int stage = req.stage
        cdef io_uring_sqe *sqe
        cdef SplicePipe pipe
        if flags & IORING_CQE_F_NOTIF:
            # A zero-copy send's notice: the kernel no longer reads those
            # pages. The request goes once its last notice is in.
            req.notices_due -= 1
            if <unsigned int>res & NOTIF_USAGE_ZC_COPIED:
                req.zc_copied = True
            if (req.notices_due == 0 and req.stage == STAGE_IDLE
                    and (ep.sending is not req or ep.flags & EP_RELEASING)):
                # Sent (or given up) and released: nothing refers to it.
                self.requests.discard(req)
                if not ep.flags & EP_RELEASING:
                    ep.on_zc_report(req.zc_copied)
            return self.finish_op(ep)
        if flags & IORING_CQE_F_MORE:
            req.notices_due += 1            # this send's notice comes later
        req.stage = STAGE_IDLE
        try:
            if ep.flags & EP_RELEASING or ep.sending is not req:
                # Released (cancelled) meanwhile: nothing to tell.
                if not req.notices_due:
                    self.requests.discard(req)
                return 0
            if res > 0 and stage in (STAGE_SEND, STAGE_SEND_ZC,
                                     STAGE_SPLICE_OUT):
                req.consume(res)
                if stage == STAGE_SPLICE_OUT:
                    pipe = self.pipes[ep]
                    pipe.filled -= res
            if req.cancelled:
                return self.finish_send(ep, req, -ECANCELED)
            if stage == STAGE_WAIT_OUT:
                return self.send_step(ep, req)      # the send says the rest
            if stage == STAGE_SPLICE_IN:
                if res > 0:
                    pipe = self.pipes[ep]
                    pipe.filled = res
                    return self.send_step(ep, req)
                if res == 0:
                    return self.finish_send(ep, req, req.done)  # file ended
                if res == -EAGAIN or res == -EINTR:
                    return self.send_step(ep, req)
                return self.finish_send(ep, req, res)
            if res > 0:
                if req.done < req.size:
                    return self.send_step(ep, req)  # partial: the rest
                return self.finish_send(ep, req, req.done)
            if res == 0 or res == -EAGAIN or res == -EINTR:
                # The socket's buffer is full.
                self.counters['send_eagain'] += 1
                sqe = self.request_sqe(req, STAGE_WAIT_OUT)
                io_uring_prep_poll_add(sqe, ep.fd, POLLOUT)
                return 0
            if stage == STAGE_SEND_ZC and res in (-EOPNOTSUPP, -EINVAL,
                                                  -ENOBUFS):
                # Not on this socket (AF_UNIX), or out of pinned memory:
                # the same bytes go again, by copy.
                req.zc_copied = True
                req.op = REQ_SENDMSG
                return self.send_step(ep, req)
            return self.finish_send(ep, req, res)
        finally:
            if not flags & IORING_CQE_F_MORE:
                self.finish_op(ep)

    cdef int finish_send(self, Endpoint ep, Request req, Py_ssize_t res) except -1:
        cdef SplicePipe pipe
        ep.sending = None
        if req.op == REQ_SENDFILE and res < 0:
            # File bytes a cancelled or failed transfer left in the pipe
            # are not part of the stream: a fresh pipe for the next one.
            pipe = self.pipes.get(ep)
            if pipe is not None and pipe.filled:
                del self.pipes[ep]
        if not req.notices_due:
            self.requests.discard(req)
            if req.op == REQ_SEND_ZC or req.zc_copied:
                ep.on_zc_report(req.zc_copied)
        return ep.on_sent(req, res)

    cdef int submit_datagrams(self, Endpoint ep) except -1:
        # What is queued goes out as one chain of SENDMSGs linked with
        # IOSQE_IO_LINK: the kernel sends them in order, and one that has to
        # wait for buffer space holds back those after it rather than being
        # overtaken (AF_UNIX datagrams arrive in order). The next chain
        # starts when this one has completed; the queue keeps each Request
        # until its CQE says it was sent.
        cdef io_uring_sqe *sqe = NULL
        cdef Request req
        cdef unsigned int count = 0, most
        if (ep.sends_inflight or ep.armed & ARM_SEND_POLL
                or ep.flags & EP_RELEASING or not ep.send_queue):
            return 0
        if self.ring.sq_space() < 2:
            self.ring.submit()
        # No submit may happen inside the chain: a link flag set on an SQE
        # the kernel already took would mean nothing.
        most = max(1, min(self.ring.sq_space(), DGRAM_CHAIN_MAX))
        for req in ep.send_queue:
            if count == most:
                break
            if sqe != NULL:
                sqe.flags |= IOSQE_IO_LINK
            sqe = self.request_sqe(req, STAGE_DATAGRAM)
            # MSG_DONTWAIT: a full socket comes back as -EAGAIN and the
            # datagram is sent again from the start after a POLLOUT wait.
            # Left to retry by itself, the kernel (6.x) resends an AF_UNIX
            # datagram from an iterator the failed try already consumed:
            # an empty datagram arrives instead (tests/test_udp.py).
            io_uring_prep_sendmsg(sqe, ep.fd, &req.msg,
                                  MSG_NOSIGNAL | MSG_DONTWAIT)
            ep.sends_inflight += 1
            count += 1
        self.counters['datagram_sends'] += count
        return 0

    cdef int datagram_done(self, Request req, int res) except -1:
        cdef Endpoint ep = req.ep
        cdef io_uring_sqe *sqe
        ep.sends_inflight -= 1
        req.stage = STAGE_IDLE
        self.requests.discard(req)
        try:
            if ep.flags & EP_RELEASING:
                return 0
            if res == -EAGAIN:
                # The socket's buffer is full: this one and (cancelled) the
                # rest of its chain stay queued until it is writable.
                ep.armed |= ARM_SEND_BLOCKED
                self.counters['send_eagain'] += 1
            elif res != -ECANCELED and res != -EINTR:
                # Sent, or refused (reported; the datagram is dropped, as a
                # sendto() that raised would have it).
                if ep.send_queue[0] is req:
                    ep.send_queue.popleft()
                else:
                    ep.send_queue.remove(req)
                ep.on_sent(req, res)
            if ep.sends_inflight == 0 and not ep.flags & EP_RELEASING:
                if ep.armed & ARM_SEND_BLOCKED:
                    ep.armed &= ~ARM_SEND_BLOCKED
                    ep.armed |= ARM_SEND_POLL
                    sqe = self.op_sqe(ep, OP_SEND_POLL)
                    io_uring_prep_poll_add(sqe, ep.fd, POLLOUT)
                    return 0
                return self.submit_datagrams(ep)
        finally:
            self.finish_op(ep)
        return 0

    def submit_request(self, Request req not None, callback, int flags=0):
        """Hand a sock_* operation to the kernel; callback(req, res) runs
        when it completes (res: bytes, an fd, 0, or -errno). `flags` go to
        send and sendmsg (with MSG_NOSIGNAL)."""
        cdef io_uring_sqe *sqe
        cdef int op = req.op
        if req in self.requests:
            raise RuntimeError("request already submitted")
        if not REQ_SEND <= op <= REQ_CONNECT:
            raise ValueError(f"unknown request {op}")
        sqe = self.request_sqe(req, STAGE_SOCK)
        if op == REQ_RECV:
            io_uring_prep_recv(sqe, req.fd, req.iov.iov_base, req.iov.iov_len, 0)
        elif op == REQ_RECVMSG:
            io_uring_prep_recvmsg(sqe, req.fd, &req.msg, 0)
        elif op == REQ_SEND:
            io_uring_prep_send(sqe, req.fd, req.iov.iov_base, req.iov.iov_len,
                               MSG_NOSIGNAL | flags)
        elif op == REQ_SENDMSG:
            io_uring_prep_sendmsg(sqe, req.fd, &req.msg, MSG_NOSIGNAL | flags)
        elif op == REQ_ACCEPT:
            io_uring_prep_accept(sqe, req.fd, <sockaddr *>&req.name,
                                 &req.namelen, SOCK_NONBLOCK | SOCK_CLOEXEC)
        elif op == REQ_CONNECT:
            io_uring_prep_connect(sqe, req.fd, <sockaddr *>&req.name,
                                  req.namelen)
        req.callback = callback
        self.counters['sock_requests'] += 1
        # Submitted now, not with the iteration's batch: asyncio's sock_*
        # calls start their operation before they first yield (a
        # sock_connect is under way, a sock_sendall's bytes are in the
        # socket), and callers rely on that ordering.
        self.ring.submit()

    def cancel_request(self, Request req not None):
        """Ask the kernel to stop `req`; its callback still runs, with
        -ECANCELED, or with the result if it completed first."""
        cdef io_uring_sqe *sqe
        if req.cancelled or req not in self.requests:
            return
        req.cancelled = True
        sqe = self.ring.get_sqe()
        io_uring_prep_cancel64(sqe, tag(<void *>req, OP_REQUEST), 0)
        io_uring_sqe_set_data64(sqe, OP_IGNORE)

    cdef int sock_request_done(self, Request req, int res) except -1:
        req.res = res
        req.stage = STAGE_IDLE
        req.release_buffer()        # the kernel is done with the memory
        self.requests.discard(req)
        if req.callback is not None:
            callback, req.callback = req.callback, None
            callback(req, res)
        return 0

    cdef int request_done(self, Request req, int res, uint32_t flags) except -1:
        if req.ep is None:
            return self.sock_request_done(req, res)
        if req.stage == STAGE_DATAGRAM:
            return self.datagram_done(req, res)
        return self.send_done(req, res, flags)

    cdef SplicePipe pipe_for(self, Endpoint ep):
        cdef SplicePipe pipe = self.pipes.get(ep)
        if pipe is not None:
            return pipe
        pipe = SplicePipe.__new__(SplicePipe)
        pipe.rfd, pipe.wfd = os.pipe2(os.O_CLOEXEC)
        try:
            pipe.size = fcntl.fcntl(pipe.wfd, fcntl.F_SETPIPE_SZ,
                                    SPLICE_PIPE_SIZE)
        except OSError:
            pipe.size = fcntl.fcntl(pipe.wfd, fcntl.F_GETPIPE_SZ)
        self.pipes[ep] = pipe
        return pipe

    # -- watchers ---------------------------------------------------------------

    cdef int watch(self, Endpoint ep, uint32_t events) except -1:
        cdef uint32_t armed_mask = 0
        if events & POLLIN:
            ep.flags |= EP_WANT_IN
        else:
            ep.flags &= ~EP_WANT_IN
        if events & POLLOUT:
            ep.flags |= EP_WANT_OUT
        else:
            ep.flags &= ~EP_WANT_OUT
        if ep.flags & EP_RELEASING:
            return 0
        if ep.armed & ARM_POLL:
            if ep.armed & ARM_POLL_IN:
                armed_mask |= POLLIN
            if ep.armed & ARM_POLL_OUT:
                armed_mask |= POLLOUT
            if armed_mask != (events & (POLLIN | POLLOUT)) and not (
                    ep.armed & ARM_POLL_CANCEL):
                # Interest changed: the old poll ends (ECANCELED) and its
                # CQE arms the new interest.
                self.cancel_op(ep, OP_POLL)
            return 0
        return self.arm_poll(ep)

    cdef int arm_poll(self, Endpoint ep) except -1:
        cdef io_uring_sqe *sqe
        cdef unsigned mask = 0
        if ep.flags & EP_WANT_IN:
            mask |= POLLIN
            ep.armed |= ARM_POLL_IN
        if ep.flags & EP_WANT_OUT:
            mask |= POLLOUT
            ep.armed |= ARM_POLL_OUT
        if mask == 0:
            return 0
        sqe = self.op_sqe(ep, OP_POLL)
        io_uring_prep_poll_add(sqe, ep.fd, mask)
        ep.armed |= ARM_POLL
        return 0

    # -- releasing --------------------------------------------------------------

    cdef int release(self, Endpoint ep) except -1:
        if ep.flags & EP_RELEASING:
            return 0
        ep.flags |= EP_RELEASING
        ep.flags &= ~EP_READING
        ep.send_queue = None        # in-flight sends are in `requests`
        ep.sending = None
        self.parked.pop(ep, None)
        if self.endpoints.get(ep.fd) is ep:
            del self.endpoints[ep.fd]
        if ep.inflight == 0 or self.closed:
            # (closed: the ring is gone, nothing is in flight any more)
            self.forget(ep)
            ep.flags |= EP_RELEASED
            return ep.on_released()
        # Cancel all that is in flight on the fd; on_released() follows the
        # last CQE (finish_op). Zero-copy notices wait for the peer's ack:
        # after an abort, reset the stream so they come now.
        self.releasing.add(ep)
        if ep.kind == KIND_WATCHER:
            # add_reader() users may close the fd as soon as remove_reader()
            # returns, before this cancel is submitted: match the poll by
            # its user_data, not by an fd number that may be gone (or
            # reused). Until then the poll's file reference keeps the file.
            return self.cancel_op(ep, OP_POLL)
        if ep.kind == KIND_LISTENER:
            # The cancelled accept holds the socket's file until its task
            # work runs: run it now, so that closing the fd after release()
            # stops listening at once (the CQE is reaped as usual).
            self.cancel_op(ep, OP_ACCEPT)
            if self.ring.enabled and self.ring.on_issuer_thread():
                self.ring.wait(0, False)
            return 0
        if ep.kind == KIND_STREAM and ep.flags & EP_ABORTIVE:
            # Zero-copy sends wait for the peer's ack before the kernel
            # lets go of their pages: reset the stream so it does now.
            for req in self.requests:
                if ((<Request>req).ep is ep
                        and (<Request>req).op == REQ_SEND_ZC):
                    self.reset_stream(ep)
                    break
        return self.prep_cancel_fd(ep)

    cdef int finish_op(self, Endpoint ep) except -1:
        # The last CQE of one operation on ep's fd.
        ep.inflight -= 1
        if (ep.inflight == 0 and ep.flags & EP_RELEASING
                and not ep.flags & EP_RELEASED):
            ep.flags |= EP_RELEASED
            self.forget(ep)
            ep.on_released()
        return 0

    cdef int forget(self, Endpoint ep) except -1:
        # Nothing in flight refers to ep's memory any more.
        self.rx.pop(ep, None)
        self.releasing.discard(ep)
        if self.pipes:
            self.pipes.pop(ep, None)
        return 0

    # -- waiting and completions ----------------------------------------------------

    cdef int bind_thread(self) except -1:
        return self.ring.enable()

    cdef int poll(self, long timeout_ms) except -1:
        # Endpoints deferred by an earlier iteration are served in this one,
        # after its completions; those this one defers wait for the next.
        cdef list todo = self.deferred
        self.deferred = []
        if todo or self.ring.has_cqes():
            timeout_ms = 0
        # The buffers handed on since the last wait go back to the rings.
        self.rbufs.replenish()
        if self.dbufs is not None:
            self.dbufs.replenish()
        self.ring.wait(timeout_ms)
        self.reap()
        if todo:
            self.run_deferred(todo)
        return self.raise_recorded_error()

    cdef int reap(self) except -1:
        cdef Ring ring = self.ring
        cdef unsigned int n, i
        cdef int rounds = 0
        while rounds < REAP_ROUNDS:
            rounds += 1
            n = ring.reap()
            if n == 0:
                break
            for i in range(n):
                try:
                    self.complete(ring.cqe_ud[i], ring.cqe_res[i],
                                  ring.cqe_flags[i])
                except BaseException as exc:
                    self.record_error(exc)
        return 0

    cdef int complete(self, uint64_t ud, int res, uint32_t flags) except -1:
        cdef int op = tag_op(ud)
        cdef void *ptr = tag_object(ud)
        cdef Endpoint ep
        cdef uint64_t drained
        if ptr == NULL:
            if op == OP_WAKE:
                read(self.wakefd, &drained, 8)
                if not flags & IORING_CQE_F_MORE and not self.closed:
                    self.arm_wake()
            return 0
        # The driver holds the object user_data names until this CQE has
        # been handled (endpoints, requests); the handler may let go of it
        # (a cancelled caller's Request is held by nothing else): this
        # local reference keeps it alive until the handler has returned.
        cdef object owner = <object>ptr
        if op == OP_REQUEST:
            return self.request_done(<Request>owner, res, flags)
        ep = <Endpoint>owner
        try:
            if op == OP_RECV:
                if ep.flags & EP_MULTISHOT_DGRAM:
                    self.recvmsg_multishot_done(ep, res, flags)
                elif ep.kind == KIND_DATAGRAM:
                    self.recvmsg_done(ep, res)
                else:
                    self.recv_done(ep, res, flags)
            elif op == OP_ACCEPT:
                self.accept_done(ep, res, flags)
            elif op == OP_POLL:
                self.poll_done(ep, res)
            elif op == OP_SEND_POLL:
                ep.armed &= ~ARM_SEND_POLL
                if not ep.flags & EP_RELEASING:
                    self.submit_datagrams(ep)
        finally:
            if not flags & IORING_CQE_F_MORE:
                self.finish_op(ep)
        return 0

    # -- reading ----------------------------------------------------------------

    cdef int recv_done(self, Endpoint ep, int res, uint32_t flags) except -1:
        # Streams are read by what they carry (measured, see the README).
        # Small messages: a multishot recv from the provided-buffer ring
        # every stream shares, no syscall per read. A bulk stream (one that
        # fills whole buffers of that ring): readiness (a multishot poll)
        # and recv(2) straight into the bytes object the protocol gets
        # (bulk_read), so its data stays in the cache from the kernel's
        # copy to the protocol's write. Recvs the kernel completes ahead,
        # for many bulk streams at once, land in memory that is cold again
        # when the protocol gets to it: the kernel's two copies then cost
        # twice as much, and the ring's data is copied once more into the
        # bytes for data_received() (perf, 50 streams x 64 KiB).
        # A switch cancels the armed operation and arms the other once its
        # last CQE is in, so the bytes stay in order.
        cdef bint more = flags & IORING_CQE_F_MORE
        cdef bint polled = ep.armed & ARM_RECV_BULK
        cdef unsigned int bid
        if not more:
            ep.armed &= ~(ARM_RECV | ARM_RECV_CANCEL | ARM_RECV_BULK)
        if polled:
            if ep.flags & EP_RELEASING or not ep.flags & EP_READING:
                pass
            elif res > 0:
                if not (self.parked and ep in self.parked):
                    # A FIN (or error) that came with the data raises no
                    # new wakeup: then read on until recv() says so.
                    self.bulk_read(ep, (res & (POLLRDHUP | POLLHUP |
                                               POLLERR)) != 0)
            elif res < 0 and res != -ECANCELED:
                ep.flags &= ~EP_READING
                return ep.on_read_error(-res)
            if not more and ep.flags & EP_READING and not ep.flags & EP_RELEASING:
                self.arm_recv(ep)
            return 0
        if res > 0:
            bid = flags >> IORING_CQE_BUFFER_SHIFT
            self.rbufs.taken()
            try:
                if ep.flags & EP_RELEASING:
                    pass
                elif ep.flags & EP_READING and not (self.parked and ep in self.parked):
                    ep.on_data(self.rbufs.buf(bid), res)
                else:
                    self.park(ep, PyBytes_FromStringAndSize(
                        self.rbufs.buf(bid), res))
            finally:
                self.rbufs.give_back(bid)
            if <unsigned int>res == self.buf_size and not ep.flags & EP_BULK:
                ep.flags |= EP_BULK
                ep.armed &= ~ARM_QUIET_MASK
                self.counters['bulk_switches'] += 1
                if more:
                    self.cancel_op(ep, OP_RECV)     # re-armed as bulk
            if not more and ep.flags & EP_READING and not ep.flags & EP_RELEASING:
                self.counters['multishot_rearms'] += 1
                self.arm_recv(ep)
            return 0
        if ep.flags & EP_RELEASING:
            return 0
        if res == 0:
            # EOF reaches the protocol in the next iteration, never in the
            # one that delivered the data it came with: a readiness loop
            # finds such a FIN on its next read (asyncio's callback order;
            # CPython's TLS tests depend on it).
            self.park(ep, None)
            if ep.flags & EP_READING:
                self.defer(ep)
            return 0
        if res == -ENOBUFS or res == -ECANCELED or res == -EINTR:
            # The ring ran dry (the buffers are back once this batch is
            # handed on, and it offers more from now on), or a pause or a
            # switch cancelled it: go on if we still read.
            if res == -ENOBUFS:
                self.counters['enobufs'] += 1
                self.rbufs.ran_dry()
            if not more and ep.flags & EP_READING:
                self.counters['multishot_rearms'] += 1
                self.arm_recv(ep)
            return 0
        if ep.flags & EP_READING:
            ep.flags &= ~EP_READING
            return ep.on_read_error(-res)
        return 0

    cdef int bulk_read(self, Endpoint ep, bint drain) except -1:
        # A bulk stream is readable (its poll CQE): recv until a read comes
        # back short (the socket is drained, the next arrival wakes the
        # poll), as a readiness loop does; with `drain`, until recv() says
        # EOF or EAGAIN, one short read per iteration (the epoll driver's
        # read_stream() has the same rules).
        cdef Py_ssize_t n
        cdef unsigned int quiet
        cdef int rounds = 0
        while ep.flags & EP_READING and not ep.flags & EP_RELEASING:
            if rounds == BULK_READS_PER_WAKEUP:
                # There may be more, and no new arrival to say so.
                return self.defer(ep)
            rounds += 1
            data = recv_bytes(ep.fd, BULK_READ_SIZE, &n)
            if n > 0:
                if n <= <Py_ssize_t>self.buf_size:
                    quiet = ((ep.armed & ARM_QUIET_MASK) >> ARM_QUIET_SHIFT) + 1
                    ep.armed &= ~ARM_QUIET_MASK
                    if quiet < BULK_QUIET_RECVS:
                        ep.armed |= quiet << ARM_QUIET_SHIFT
                    else:
                        # Back to the shared ring once the poll is gone.
                        ep.flags &= ~EP_BULK
                        if ep.armed & ARM_RECV and not ep.armed & ARM_RECV_CANCEL:
                            self.cancel_op(ep, OP_RECV)
                else:
                    ep.armed &= ~ARM_QUIET_MASK
                ep.on_bytes(data)
                if not ep.flags & EP_BULK:
                    return 0
                if n < BULK_READ_SIZE:
                    return self.defer(ep) if drain else 0
            elif n == 0:
                # EOF: in the next iteration, as recv_done() delivers it.
                self.park(ep, None)
                return self.defer(ep)
            elif n == -EAGAIN:
                return 0
            else:
                ep.flags &= ~EP_READING
                return ep.on_read_error(-n)
        return 0

    cdef int park(self, Endpoint ep, object chunk) except -1:
        # Read while the owner was not reading (or EOF: None): delivered by
        # deliver_parked() once it reads again, in order.
        self.parked.setdefault(ep, []).append(chunk)
        return 0

    cdef int defer(self, Endpoint ep) except -1:
        if not ep.flags & EP_DEFERRED:
            ep.flags |= EP_DEFERRED
            self.deferred.append(ep)
        return 0

    cdef int run_deferred(self, list todo) except -1:
        cdef Endpoint ep
        for ep in todo:
            ep.flags &= ~EP_DEFERRED
            try:
                if self.parked and ep in self.parked:
                    self.deliver_parked(ep)
                elif (ep.armed & ARM_RECV_BULK and ep.flags & EP_READING
                        and not ep.flags & EP_RELEASING):
                    self.bulk_read(ep, True)    # it stopped with more to read
            except BaseException as exc:
                self.record_error(exc)
        return 0

    cdef int deliver_parked(self, Endpoint ep) except -1:
        cdef list chunks = self.parked.get(ep)
        if chunks is None:
            return 0
        while chunks and ep.flags & EP_READING and not ep.flags & EP_RELEASING:
            chunk = chunks.pop(0)
            if chunk is None:
                ep.flags &= ~EP_READING
                del self.parked[ep]
                return ep.on_eof()
            if type(chunk) is tuple:        # a datagram and its sender
                data, name = chunk
                ep.on_datagram(PyBytes_AS_STRING(data), len(data),
                               <sockaddr *>PyBytes_AS_STRING(name), len(name))
            else:
                ep.on_bytes(chunk)
        if not chunks:
            self.parked.pop(ep, None)
            if not ep.flags & EP_READING or ep.flags & EP_RELEASING:
                pass
            elif ep.armed & ARM_RECV_BULK and not ep.armed & ARM_RECV_CANCEL:
                # A bulk stream's poll, armed while these waited: what it
                # reported meanwhile was not read (see start_reading).
                self.defer(ep)
            else:
                self.arm_recv(ep)
        return 0

    cdef BufferRing datagram_buffers(self):
        if self.dbufs is None:
            self.dbufs = BufferRing.new(self.ring, DGRAM_BUF_COUNT,
                                        DGRAM_BUF_RING_SIZE, DGRAM_GROUP)
        return self.dbufs

    cdef int recvmsg_multishot_done(self, Endpoint ep, int res,
                                    uint32_t flags) except -1:
        cdef bint more = flags & IORING_CQE_F_MORE
        cdef unsigned int bid
        cdef char *buf
        cdef io_uring_recvmsg_out *out
        cdef socklen_t namelen
        cdef Request rx = self.rx.get(ep)
        if not more:
            ep.armed &= ~(ARM_RECV | ARM_RECV_CANCEL)
        if flags & IORING_CQE_F_BUFFER:
            bid = flags >> IORING_CQE_BUFFER_SHIFT
            self.dbufs.taken()
            buf = self.dbufs.buf(bid)
            try:
                out = io_uring_recvmsg_validate(buf, res, &rx.msg)
                if out != NULL and not ep.flags & EP_RELEASING:
                    namelen = min(out.namelen, rx.msg.msg_namelen)
                    payload = <char *>io_uring_recvmsg_payload(out, &rx.msg)
                    size = io_uring_recvmsg_payload_length(out, res, &rx.msg)
                    if ep.flags & EP_READING and not (self.parked and ep in self.parked):
                        ep.on_datagram(payload, size,
                                       <sockaddr *>io_uring_recvmsg_name(out),
                                       namelen)
                    else:
                        # Came while paused: delivered on resume, in order.
                        self.park(ep, (payload[:size],
                                       (<char *>io_uring_recvmsg_name(out))[:namelen]))
            finally:
                self.dbufs.give_back(bid)
        elif res < 0 and not ep.flags & EP_RELEASING:
            if res == -ENOBUFS:
                self.counters['enobufs'] += 1
                self.dbufs.ran_dry()
            elif res != -ECANCELED and res != -EINTR:
                # ICMP errors and the like: reported, reading goes on.
                ep.on_read_error(-res)
        if not more and ep.flags & EP_READING and not ep.flags & EP_RELEASING:
            self.counters['multishot_rearms'] += 1
            self.arm_recv(ep)
        return 0

    cdef int recvmsg_done(self, Endpoint ep, int res) except -1:
        cdef Request rx = self.rx.get(ep)
        ep.armed &= ~ARM_RECV
        if ep.flags & EP_RELEASING or rx is None:
            return 0
        if res >= 0:
            # Delivered even if reading paused meanwhile: it was read.
            ep.on_datagram(<char *>rx.iov.iov_base, res,
                           <sockaddr *>&rx.name, rx.msg.msg_namelen)
        elif res != -ECANCELED and res != -EINTR:
            # ICMP errors and the like: reported, reading goes on.
            ep.on_read_error(-res)
        if ep.flags & EP_READING and not ep.flags & EP_RELEASING:
            self.arm_recv(ep)
        return 0

    cdef int accept_done(self, Endpoint ep, int res, uint32_t flags) except -1:
        cdef bint more = flags & IORING_CQE_F_MORE
        cdef bint rearm = not more
        if not more:
            ep.armed &= ~ARM_ACCEPT
        if res >= 0:
            if ep.flags & EP_RELEASING or not ep.flags & EP_READING:
                close(res)          # the server is closing: nobody to own it
            else:
                ep.on_accept(res)
        elif res == -ECANCELED:
            rearm = False
        elif res == -EMFILE or res == -ENFILE:
            self.counters['accept_emfile'] += 1
            if not ep.flags & EP_RELEASING:
                dropped = self.accept_emfile(ep)
                ep.on_accept_error(-res)
                if not dropped and rearm:
                    # Not even the spare fd helped: retry in a while rather
                    # than spin (asyncio waits the same second).
                    rearm = False
                    ep.flags &= ~EP_READING
                    self.loop.call_later(1.0, self._retry_accept, ep)
        elif res not in (-ECONNABORTED, -EINTR, -EAGAIN):
            rearm = False
            if not ep.flags & EP_RELEASING:
                ep.on_accept_error(-res)
        if rearm and ep.flags & EP_READING and not ep.flags & EP_RELEASING:
            self.counters['multishot_rearms'] += 1
            self.arm_accept(ep)
        return 0

    cdef int poll_done(self, Endpoint ep, int res) except -1:
        ep.armed &= ~(ARM_POLL | ARM_POLL_CANCEL | ARM_POLL_IN | ARM_POLL_OUT)
        if ep.flags & EP_RELEASING:
            return 0
        if res > 0:
            ep.on_ready(<uint32_t>res)
        elif res != -ECANCELED:
            ep.on_ready(POLLERR)
            return 0            # do not re-arm a poll the kernel refuses
        # Single-shot, re-armed now and submitted after the callbacks ran:
        # still ready then means another event, as level-triggered.
        if not ep.flags & EP_RELEASING:
            self.arm_poll(ep)
        return 0

    def stats(self):
        """Counters of the completion path (re-arms, ENOBUFS, overflows)."""
        return dict(self.counters,
                    cq_overflow_flushes=self.ring.overflow_flushes)


def new_driver(loop, *, unsigned int entries=DEFAULT_ENTRIES,
               unsigned int cq_entries=DEFAULT_CQ_ENTRIES,
               unsigned int buf_count=DEFAULT_BUF_COUNT,
               unsigned int buf_size=DEFAULT_BUF_SIZE):
    """The io_uring driver for `loop` (a fastsock CoreLoop).

    entries/cq_entries size the rings; buf_count (a power of two) buffers of
    buf_size bytes form the provided-buffer ring every stream recv shares."""
    if buf_count == 0 or buf_count & (buf_count - 1) or buf_count > 32768:
        raise ValueError("buf_count must be a power of two up to 32768")
    return UringDriver.new(loop, entries, cq_entries, buf_count, buf_size)
