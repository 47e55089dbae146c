# cython: language_level=3
"""Readiness driver: edge-triggered epoll.

Streams read until the kernel runs dry (a short read means it has: a stream
recv returns all that is queued up to the buffer size), at most
READS_PER_WAKEUP rounds per wakeup for fairness; the rest is owed in the
next iteration. Small reads go through the loop's one buffer and are copied
out; a bulk stream is read straight into the bytes object its protocol gets
(driver.recv_bytes). Writes go out directly (Driver.try_send); a send Request
(what the socket did not take at once) goes out as soon as the socket takes
it, EPOLLOUT registered only while one waits. Watchers (add_reader/
add_writer) are level-triggered, as selectors are.
"""

from cpython.exc cimport PyErr_CheckSignals
from libc.stdlib cimport malloc, free
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memset

import collections

from fastsock.driver cimport *
from fastsock.system cimport *

cdef enum:
    READ_BUFFER_SIZE = 256 * 1024
    READS_PER_WAKEUP = 8
    ACCEPTS_PER_WAKEUP = 128
    DGRAMS_PER_WAKEUP = 64
    # Request.stage of a zero-copy send: the kernel reported a copy
    ZC_COPIED = 1

cdef uint32_t STREAM_EVENTS = EPOLLIN | EPOLLRDHUP | EPOLLET

# Zero-copy sends the kernel never reported when their loop closed: their
# memory is never freed.
_stranded = []


cdef class ZeroCopyState:
    pass


cdef class EpollDriver(Driver):

    @staticmethod
    cdef EpollDriver new(object loop):
        cdef EpollDriver self = EpollDriver.__new__(EpollDriver)
        cdef epoll_event ev
        self.name = "epoll"
        self.loop = loop
        self.endpoints = {}
        self.slots = [None]         # slot 0: the wakeup eventfd (key 0)
        self.free_slots = []
        self.deferred = []
        self.rearm = []
        self.awaiting_notices = set()
        self.epfd = self.wakefd = self.reserve_fd = -1
        self.rbuf_size = READ_BUFFER_SIZE
        self.rbuf = <char *>malloc(self.rbuf_size)
        if self.rbuf == NULL:
            raise MemoryError()
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            self.close()
            raise OSError(errno, "epoll_create1 failed")
        self.wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.wakefd < 0:
            self.close()
            raise OSError(errno, "eventfd failed")
        ev.events = EPOLLIN | EPOLLET
        ev.data.u64 = 0             # key 0 marks the wakeup eventfd
        if epoll_ctl(self.epfd, EPOLL_CTL_ADD, self.wakefd, &ev) < 0:
            self.close()
            raise OSError(errno, "epoll_ctl failed")
        self.reserve_fd = open(b"/dev/null", O_RDONLY | O_CLOEXEC)
        return self

    def __dealloc__(self):
        if self.rbuf != NULL:
            free(self.rbuf)
            self.rbuf = NULL

    cdef int close(self) except -1:
        cdef Endpoint ep
        if self.closed:
            return 0
        # Zero-copy sends not reported yet: reset those streams so the
        # kernel lets go of the pages now; whatever it still holds after
        # that keeps its objects forever rather than risk the kernel
        # reading freed memory.
        for ep in list(self.awaiting_notices) + list(self.endpoints.values()):
            if ep.zc is not None and (<ZeroCopyState>ep.zc).in_flight:
                self.reset_stream(ep)
                self.read_zc_notices(ep)
                if (<ZeroCopyState>ep.zc).in_flight:
                    _stranded.append(ep.zc)
        self.closed = True
        for fd in (self.epfd, self.wakefd, self.reserve_fd):
            if fd >= 0:
                close(fd)
        self.epfd = self.wakefd = self.reserve_fd = -1
        self.awaiting_notices.clear()
        self.endpoints.clear()
        self.deferred.clear()
        self.rearm.clear()
        self.slots = [None]
        self.free_slots.clear()
        return 0

    cdef void wakeup(self) nogil:
        cdef uint64_t one = 1
        if self.wakefd >= 0:
            write(self.wakefd, &one, 8)

    # -- registration -------------------------------------------------------

    cdef int ctl(self, int op, Endpoint ep, unsigned int events) except -1:
        cdef epoll_event ev
        ev.events = events
        ev.data.u64 = ep.key
        if epoll_ctl(self.epfd, op, ep.fd, &ev) < 0:
            if op == EPOLL_CTL_MOD and errno == ENOENT:
                # The owner closed the fd behind our back and it was
                # reopened: the kernel dropped the old registration.
                return self.ctl(EPOLL_CTL_ADD, ep, events)
            raise OSError(errno, f"epoll_ctl on fd {ep.fd} failed")
        ep.interest = events
        return 0

    cdef int attach(self, Endpoint ep) except -1:
        # A registration names the endpoint by a key the driver looks up,
        # not by its address: the kernel may keep a registration after its
        # fd was closed (another descriptor still holds the file: a dup(),
        # a forked child) and then EPOLL_CTL_DEL cannot remove it. Such a
        # stale registration's events carry a key that no longer matches
        # and are ignored; a freed object is never looked at.
        cdef unsigned int events
        cdef Py_ssize_t slot
        if ep.kind == KIND_WATCHER:
            events = 0                      # watch() sets interest
        elif ep.kind == KIND_LISTENER:
            events = EPOLLIN | EPOLLET
        else:
            events = STREAM_EVENTS
        if self.free_slots:
            slot = self.free_slots.pop()
        else:
            slot = len(self.slots)
            self.slots.append(None)
        self.generation += 1
        if self.generation == 0:
            self.generation = 1             # key 0 is the wakeup's
        ep.key = (<uint64_t>self.generation << 32) | <uint64_t>slot
        self.slots[slot] = ep
        try:
            return self.ctl(EPOLL_CTL_ADD, ep, events)
        except BaseException:
            self.unregister(ep)
            raise

    cdef int unregister(self, Endpoint ep) except -1:
        # Remove the kernel's registration if the fd still names it; either
        # way the key stops naming ep.
        cdef epoll_event ev
        cdef Py_ssize_t slot = <Py_ssize_t>(ep.key & 0xffffffff)
        if ep.key == 0:
            return 0
        epoll_ctl(self.epfd, EPOLL_CTL_DEL, ep.fd, &ev)
        if slot < len(self.slots) and self.slots[slot] is ep:
            self.slots[slot] = None
            self.free_slots.append(slot)
        ep.key = 0
        return 0

    cdef Endpoint lookup(self, uint64_t key):
        cdef Py_ssize_t slot = <Py_ssize_t>(key & 0xffffffff)
        cdef Endpoint ep
        if slot >= len(self.slots):
            return None
        ep = self.slots[slot]
        if ep is None or ep.key != key:
            return None             # a stale registration's event
        return ep

    cdef int start_reading(self, Endpoint ep) except -1:
        if ep.flags & (EP_READING | EP_RELEASING):
            return 0
        ep.flags |= EP_READING
        # Edge-triggered: data that came while we were not reading raised no
        # new edge, so try once in the next iteration.
        return self.defer(ep)

    cdef int stop_reading(self, Endpoint ep) except -1:
        ep.flags &= ~EP_READING
        return 0

    cdef int defer(self, Endpoint ep) except -1:
        if not ep.flags & EP_DEFERRED:
            ep.flags |= EP_DEFERRED
            self.deferred.append(ep)
        return 0

    cdef int set_out(self, Endpoint ep, bint on) except -1:
        cdef unsigned int events = ep.interest
        if ep.flags & EP_RELEASING:
            return 0            # no longer registered: never re-add it
        if on:
            events |= EPOLLOUT
        else:
            events &= ~EPOLLOUT
        if events != ep.interest:
            self.ctl(EPOLL_CTL_MOD, ep, events)
        return 0

    cdef int watch(self, Endpoint ep, uint32_t events) except -1:
        cdef unsigned int want = 0
        if ep.flags & EP_RELEASING:
            return 0
        if ep.kind != KIND_WATCHER:
            raise ValueError("watch() is for watchers")
        # Level-triggered like selectors (a callback that reads only part of
        # the data is called again), built from one-shot registrations
        # re-armed after the callbacks ran (poll()): a registration that
        # outlived its fd fires at most once.
        if events & POLLIN:
            want |= EPOLLIN
        if events & POLLOUT:
            want |= EPOLLOUT
        if want:
            want |= EPOLLONESHOT
        if want != ep.interest:
            self.ctl(EPOLL_CTL_MOD, ep, want)
        return 0

    # -- sending --------------------------------------------------------------

    cdef int datagram_queued(self, Endpoint ep) except -1:
        if len(ep.send_queue) == 1:
            return self.push_datagrams(ep)
        return 0                # EPOLLOUT is armed for the older ones

    cdef int start_stream_send(self, Endpoint ep, Request req,
                               bint now) except -1:
        if now:
            return self.push(ep)
        # The caller just found the socket full: wait for room.
        return self.set_out(ep, True)

    cdef int push(self, Endpoint ep) except -1:
        # Send what the stream's Request still holds, for as long as the
        # socket takes it; EPOLLOUT only while some waits.
        cdef Request req = ep.sending
        cdef Py_ssize_t n
        while req.done < req.size:
            n = self.send_some(ep, req)
            if n > 0:
                req.consume(n)
            elif n == 0:
                if req.op == REQ_SENDFILE:
                    break               # the file ended early
                return self.set_out(ep, True)
            elif n < 0 and errno == EINTR:
                continue
            elif n < 0 and errno == EAGAIN:
                return self.set_out(ep, True)
            elif n < 0:
                return self.finish_send(ep, req, -errno)
        return self.finish_send(ep, req, req.done)

    cdef Py_ssize_t send_some(self, Endpoint ep, Request req) except -2:
        cdef long off
        cdef Py_ssize_t n
        if req.op == REQ_SENDFILE:
            off = req.file_offset
            n = sendfile(ep.fd, req.file_fd, &off,
                         min(<size_t>(req.size - req.done),
                             <size_t>SENDFILE_MAX))
            return n
        if req.op == REQ_SEND_ZC:
            return self.send_zerocopy(ep, req)
        return sendmsg(ep.fd, &req.msg, MSG_NOSIGNAL | MSG_DONTWAIT)

    cdef int finish_send(self, Endpoint ep, Request req, Py_ssize_t res) except -1:
        ep.sending = None
        self.set_out(ep, False)
        if req.op == REQ_SEND_ZC and req.notices_due == 0:
            ep.on_zc_report(req.stage & ZC_COPIED)
        return ep.on_sent(req, res)

    cdef int cancel_send(self, Endpoint ep, Request req) except -1:
        # Nothing of a readiness send is in the kernel between two calls.
        if ep.sending is not req:
            return 0
        return self.finish_send(ep, req, -ECANCELED)

    cdef Py_ssize_t send_zerocopy(self, Endpoint ep, Request req) except -2:
        # MSG_ZEROCOPY: the kernel pins the pages and tells us through the
        # socket's error queue when it is done; until then the Request
        # stays in ep.zc. Each successful call gets the next number.
        cdef int one = 1
        cdef Py_ssize_t n
        cdef ZeroCopyState zc = ep.zc
        if zc is not None and len(zc.in_flight) >= 2:
            # A writer that never yields to the loop would never see the
            # notices (EPOLLERR): look now, so that "the kernel copied
            # anyway" (loopback) turns zero copy off after a send or two.
            self.read_zc_notices(ep)
        if not ep.flags & EP_ZC_READY:
            if setsockopt(ep.fd, SOL_SOCKET, SO_ZEROCOPY, &one, sizeof(one)) < 0:
                req.stage |= ZC_COPIED      # not on this socket: copy
                return sendmsg(ep.fd, &req.msg, MSG_NOSIGNAL | MSG_DONTWAIT)
            ep.flags |= EP_ZC_READY
            if ep.zc is None:
                zc = ZeroCopyState.__new__(ZeroCopyState)
                zc.in_flight = collections.deque()
                ep.zc = zc
        zc = ep.zc
        n = sendmsg(ep.fd, &req.msg,
                    MSG_NOSIGNAL | MSG_DONTWAIT | MSG_ZEROCOPY)
        if n >= 0:
            zc.in_flight.append((zc.next_seq, req))
            zc.next_seq += 1
            req.notices_due += 1
        elif errno == ENOBUFS:
            # Out of optmem for pinned pages: this and later sends copy.
            req.stage |= ZC_COPIED
            n = sendmsg(ep.fd, &req.msg, MSG_NOSIGNAL | MSG_DONTWAIT)
        return n

    cdef int read_zc_notices(self, Endpoint ep) except -1:
        cdef char control[256]
        cdef msghdr msg
        cdef cmsghdr *cm
        cdef sock_extended_err *serr
        cdef ZeroCopyState zc = ep.zc
        while zc is not None and zc.in_flight:
            memset(&msg, 0, sizeof(msg))
            msg.msg_control = control
            msg.msg_controllen = sizeof(control)
            if recvmsg(ep.fd, &msg, MSG_ERRQUEUE | MSG_DONTWAIT) < 0:
                if errno == EINTR:
                    continue
                break
            cm = CMSG_FIRSTHDR(&msg)
            while cm != NULL:
                if ((cm.cmsg_level == SOL_IP and cm.cmsg_type == IP_RECVERR) or
                        (cm.cmsg_level == SOL_IPV6 and cm.cmsg_type == IPV6_RECVERR)):
                    serr = <sock_extended_err *>CMSG_DATA(cm)
                    if (serr.ee_origin == SO_EE_ORIGIN_ZEROCOPY
                            and serr.ee_errno == 0):
                        self.release_zc(
                            ep, serr.ee_info, serr.ee_data,
                            (serr.ee_code & SO_EE_CODE_ZEROCOPY_COPIED) != 0)
                cm = CMSG_NXTHDR(&msg, cm)
        if (zc is not None and not zc.in_flight and ep.flags & EP_RELEASING
                and not ep.flags & EP_RELEASED):
            self.finish_release(ep)
        return 0

    cdef int release_zc(self, Endpoint ep, unsigned int lo, unsigned int hi,
                        bint copied) except -1:
        # A notice covers the numbers [lo, hi] (32-bit, wrapping). Notices
        # usually come in order, but not always (after a reset this kernel
        # reported [1..4] before [0]): release whatever falls in the range,
        # wherever it sits.
        cdef ZeroCopyState zc = ep.zc
        cdef unsigned int seq
        cdef Request req
        cdef object keep = collections.deque()
        for entry in zc.in_flight:
            seq = entry[0]
            if <unsigned int>(seq - lo) > <unsigned int>(hi - lo):
                keep.append(entry)
                continue
            req = <Request>entry[1]
            req.notices_due -= 1
            if copied:
                req.stage |= ZC_COPIED
            if (req.notices_due == 0 and ep.sending is not req
                    and not ep.flags & EP_RELEASING):
                ep.on_zc_report(req.stage & ZC_COPIED)
        zc.in_flight = keep
        return 0

    cdef int push_datagrams(self, Endpoint ep) except -1:
        # Oldest first, each as soon as the kernel takes it; EPOLLOUT only
        # while some wait.
        cdef Request req
        cdef Py_ssize_t n
        cdef object queue = ep.send_queue
        while queue and not ep.flags & EP_RELEASING:
            req = queue[0]
            n = sendmsg(ep.fd, &req.msg, MSG_NOSIGNAL | MSG_DONTWAIT)
            if n < 0 and errno == EINTR:
                continue
            if n < 0 and errno == EAGAIN:
                return self.set_out(ep, True)
            queue.popleft()
            ep.on_sent(req, n if n >= 0 else -errno)
        return self.set_out(ep, False)

    # -- releasing ------------------------------------------------------------

    cdef int finish_release(self, Endpoint ep) except -1:
        self.unregister(ep)
        self.awaiting_notices.discard(ep)
        ep.flags |= EP_RELEASED
        return ep.on_released()

    cdef int release(self, Endpoint ep) except -1:
        cdef ZeroCopyState zc = ep.zc
        if ep.flags & EP_RELEASING:
            return 0
        ep.flags |= EP_RELEASING
        ep.flags &= ~EP_READING
        ep.send_queue = None
        ep.sending = None
        if not ep.flags & EP_ADDED:
            ep.flags |= EP_RELEASED
            return ep.on_released()
        if self.endpoints.get(ep.fd) is ep:
            del self.endpoints[ep.fd]
        if zc is not None and zc.in_flight and ep.flags & EP_ABORTIVE:
            # Aborted (or failed) with zero-copy sends unreported: reset the
            # stream so the kernel drops its queue and reports now, and do
            # not wait for notices that a dead socket may never send. What
            # the kernel still holds, it holds by page references of its
            # own: the objects may go, what is sent no longer matters.
            self.reset_stream(ep)
            self.read_zc_notices(ep)        # may finish the release itself
            if ep.flags & EP_RELEASED:
                return 0
            zc.in_flight.clear()
        if zc is not None and zc.in_flight:
            # A graceful close: the peer still receives what pinned pages of
            # zero-copy sends hold, so keep the fd and the objects until the
            # error queue releases them; only EPOLLERR is wanted now.
            self.awaiting_notices.add(ep)
            self.ctl(EPOLL_CTL_MOD, ep, EPOLLET)
            return 0
        return self.finish_release(ep)

    # -- the loop -----------------------------------------------------------

    cdef int poll(self, long timeout_ms) except -1:
        cdef int n, i
        cdef uint64_t drained, key
        cdef Endpoint ep
        cdef list rearm
        # Endpoints deferred by an earlier iteration are read in this one,
        # after its events; those this one defers wait for the next.
        cdef list todo = self.deferred
        self.deferred = []
        if todo:
            timeout_ms = 0
        if self.rearm:
            # One-shot watchers whose callbacks have run: still ready means
            # another event, as level-triggered.
            rearm, self.rearm = self.rearm, []
            for ep in rearm:
                if ep.key and ep.interest and not ep.flags & EP_RELEASING:
                    self.ctl(EPOLL_CTL_MOD, ep, ep.interest)
        with nogil:
            n = epoll_wait(self.epfd, self.events, EPOLL_MAX_EVENTS,
                           <int>timeout_ms)
        if n < 0:
            if errno == EINTR:
                # Run Python signal handlers now (PEP 475): a
                # KeyboardInterrupt must not wait for the next event.
                PyErr_CheckSignals()
                n = 0
            else:
                raise OSError(errno, "epoll_wait failed")
        for i in range(n):
            key = self.events[i].data.u64
            if key == 0:
                read(self.wakefd, &drained, 8)
                continue
            ep = self.lookup(key)
            if ep is None:
                continue
            try:
                if (self.events[i].events & EPOLLERR and ep.zc is not None
                        and (<ZeroCopyState>ep.zc).in_flight):
                    self.read_zc_notices(ep)
                if not ep.flags & EP_RELEASING:
                    self.handle(ep, self.events[i].events)
            except BaseException as exc:
                self.record_error(exc)
        if todo:
            self.run_deferred(todo)
        return self.raise_recorded_error()

    cdef int run_deferred(self, list todo) except -1:
        cdef Endpoint ep
        for ep in todo:
            ep.flags &= ~EP_DEFERRED
            if ep.flags & EP_RELEASING or not ep.flags & EP_READING:
                continue
            try:
                if ep.kind == KIND_STREAM:
                    # What raised the missed edges is unknown: drain.
                    self.read_stream(ep, True)
                elif ep.kind == KIND_LISTENER:
                    self.accept_all(ep)
                elif ep.kind == KIND_DATAGRAM:
                    self.read_datagrams(ep)
            except BaseException as exc:
                self.record_error(exc)
        return 0

    cdef int handle(self, Endpoint ep, unsigned int ev) except -1:
        cdef int kind = ep.kind
        if kind == KIND_STREAM:
            if ev & (EPOLLOUT | EPOLLERR) and ep.sending is not None:
                self.push(ep)
            if ep.flags & EP_READING and not ep.flags & EP_DEFERRED:
                # A FIN or error that came with the data raises no new
                # edge: then read on until recv() says 0 or EAGAIN.
                self.read_stream(ep, (ev & (EPOLLRDHUP | EPOLLHUP |
                                            EPOLLERR)) != 0)
        elif kind == KIND_LISTENER:
            if ep.flags & EP_READING and not ep.flags & EP_DEFERRED:
                self.accept_all(ep)
        elif kind == KIND_DATAGRAM:
            if ev & (EPOLLOUT | EPOLLERR) and ep.interest & EPOLLOUT:
                self.push_datagrams(ep)
            if ep.flags & EP_READING and not ep.flags & EP_DEFERRED:
                self.read_datagrams(ep)
        else:
            self.rearm.append(ep)           # one-shot: see watch()
            ep.on_ready(ev)
        return 0

    cdef int read_stream(self, Endpoint ep, bint drain) except -1:
        # Small reads go through the loop's one hot buffer and are copied
        # out; a bulk stream (its last read was BULK_READ_MIN or more) is
        # read straight into the bytes object the protocol gets.
        cdef Py_ssize_t n, size
        cdef int rounds = 0
        cdef bytes data = None
        while ep.flags & EP_READING and not ep.flags & EP_RELEASING:
            if rounds == READS_PER_WAKEUP:
                return self.defer(ep)
            rounds += 1
            if ep.flags & EP_BULK:
                size = BULK_READ_SIZE
                data = recv_bytes(ep.fd, size, &n)
            else:
                size = self.rbuf_size
                n = recv(ep.fd, self.rbuf, <size_t>size, 0)
                if n < 0:
                    n = -errno
            if n > 0:
                if n >= BULK_READ_MIN:
                    ep.flags |= EP_BULK
                else:
                    ep.flags &= ~EP_BULK
                if data is not None:
                    ep.on_bytes(data)
                    data = None
                else:
                    ep.on_data(self.rbuf, n)
                if n < size:
                    if drain:
                        # The FIN (or error) that came with this data is
                        # read in the next iteration, as a readiness loop
                        # reading once per event finds it: protocols see
                        # data_received and eof_received in separate
                        # iterations on every backend.
                        return self.defer(ep)
                    return 0      # drained: the next arrival raises an edge
            elif n == 0:
                ep.flags &= ~EP_READING
                return ep.on_eof()
            elif n == -EINTR:
                continue
            elif n == -EAGAIN:
                return 0
            else:
                ep.flags &= ~EP_READING
                return ep.on_read_error(-n)
        return 0

    cdef int read_datagrams(self, Endpoint ep) except -1:
        cdef Py_ssize_t n
        cdef sockaddr_storage addr
        cdef socklen_t addrlen
        cdef int rounds = 0
        while ep.flags & EP_READING and not ep.flags & EP_RELEASING:
            if rounds == DGRAMS_PER_WAKEUP:
                return self.defer(ep)
            rounds += 1
            addrlen = sizeof(addr)
            n = recvfrom(ep.fd, self.rbuf, <size_t>self.rbuf_size, 0,
                         <sockaddr *>&addr, &addrlen)
            if n >= 0:
                ep.on_datagram(self.rbuf, n, <sockaddr *>&addr, addrlen)
            elif errno == EINTR:
                continue
            elif errno == EAGAIN:
                return 0
            else:
                # ICMP errors and the like: reported, reading goes on.
                ep.on_read_error(errno)
        return 0

    cdef int accept_all(self, Endpoint ep) except -1:
        cdef int fd, err
        cdef bint dropped
        cdef int count = 0
        while ep.flags & EP_READING and not ep.flags & EP_RELEASING:
            if count == ACCEPTS_PER_WAKEUP:
                return self.defer(ep)
            fd = accept4(ep.fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)
            if fd >= 0:
                count += 1
                ep.on_accept(fd)
            elif errno == EINTR or errno == ECONNABORTED:
                continue
            elif errno == EAGAIN:
                return 0
            elif errno == EMFILE or errno == ENFILE:
                err = errno
                dropped = self.accept_emfile(ep)
                ep.on_accept_error(err)
                if not dropped:
                    # Not even the spare fd helped: try again in a while
                    # instead of spinning (asyncio waits the same second).
                    ep.flags &= ~EP_READING
                    self.loop.call_later(1.0, self._retry_accept, ep)
                    return 0
            else:
                return ep.on_accept_error(errno)
        return 0


def new_driver(loop):
    """The epoll driver for `loop` (a fastsock CoreLoop)."""
    return EpollDriver.new(loop)
