# cython: language_level=3
"""One io_uring instance: setup, submission, reaping, provided-buffer rings.

The completion driver (uring.pyx) owns one Ring and decides what each SQE
does; this module only moves SQEs in and CQEs out:

- Ring.new() sets the ring up with the best flags the kernel takes
  (fs_uring_init in csrc/common.c: SINGLE_ISSUER | DEFER_TASKRUN, else
  COOP_TASKRUN, else none), created R_DISABLED so that the thread that runs
  the loop, not the one that made it, becomes the single issuer (enable()).
- get_sqe() hands the queued SQEs to the kernel when the SQ is full.
- wait() submits and waits in one io_uring_enter().
- reap() copies a batch of CQEs out and frees their slots before anything
  runs, so callbacks that queue new work never find the CQ full of CQEs
  already read.
- BufferRing is a provided-buffer ring (kernel 5.19+), registered with
  fs_setup_buf_ring in csrc/common.c (liburing 2.3 has no
  io_uring_setup_buf_ring).
"""

import os

from cpython.exc cimport PyErr_CheckSignals
from libc.stdint cimport uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport malloc, free
from libc.string cimport memset

from fastsock.system cimport *
from fastsock.liburing cimport *

cdef extern from "<sys/syscall.h>" nogil:
    long SYS_gettid
cdef extern from "<unistd.h>" nogil:
    long syscall(long number, ...)

cdef extern from "<sys/mman.h>" nogil:
    int munmap(void *addr, size_t length)

cdef extern from "<errno.h>" nogil:
    enum:
        EBUSY

cdef extern from "common.h" nogil:
    int fs_uring_init(unsigned entries, io_uring *ring, io_uring_params *p,
                      const unsigned *rungs, unsigned nrungs)
    io_uring_buf_ring *fs_setup_buf_ring(io_uring *ring, unsigned nentries,
                                         int bgid, unsigned flags, int *err)

cdef enum:
    RING_LEVEL_START = 16       # buffers a BufferRing offers at first
    BUF_RING_ENTRY = 16         # sizeof(struct io_uring_buf)
    BUF_SKEW = 64               # a cache line between buffers (buf())


cdef class Ring:

    @staticmethod
    cdef Ring new(unsigned int entries, unsigned int cq_entries):
        cdef Ring self = Ring.__new__(Ring)
        cdef io_uring_params params
        cdef int ret
        memset(&params, 0, sizeof(params))
        params.flags = (IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL
                        | IORING_SETUP_R_DISABLED)
        params.cq_entries = cq_entries
        ret = fs_uring_init(entries, &self.ring, &params, NULL, 0)
        if ret < 0:
            raise OSError(-ret, f"io_uring_setup failed: {os.strerror(-ret)}")
        self.ok = True
        self.setup_flags = params.flags
        self.enabled = not (params.flags & IORING_SETUP_R_DISABLED)
        if not params.features & IORING_FEAT_NODROP:
            self.exit()
            raise OSError(ENOSYS, "io_uring without IORING_FEAT_NODROP "
                          "(kernel older than 5.5)")
        return self

    def __dealloc__(self):
        self.exit()

    cdef bint supports(self, int opcode):
        cdef io_uring_probe *probe = io_uring_get_probe_ring(&self.ring)
        cdef bint ok = False
        if probe != NULL:
            ok = io_uring_opcode_supported(probe, opcode)
            io_uring_free_probe(probe)
        return ok

    cdef io_uring_sqe *get_sqe(self) except NULL:
        cdef io_uring_sqe *sqe
        if not self.ok:
            raise RuntimeError('Event loop is closed')
        sqe = io_uring_get_sqe(&self.ring)
        if sqe == NULL:
            # Submission queue full: hand what we have to the kernel.
            self.submit()
            sqe = io_uring_get_sqe(&self.ring)
            if sqe == NULL:
                raise OSError(EBUSY, "io_uring submission queue is full")
        return sqe

    cdef unsigned int sq_space(self):
        return io_uring_sq_space_left(&self.ring)

    cdef bint on_issuer_thread(self):
        # The kernel's thread id, not pthread_self(): glibc hands an exited
        # thread's pthread_t to the next thread it makes, and the kernel
        # (which compares tasks) would then refuse that thread's submissions
        # with EEXIST where this check must refuse them first. A tid comes
        # back only after the pid space wraps. gettid(2) through syscall():
        # glibc has a wrapper only from 2.30, the wheels target 2.28.
        return not self.issuer or self.issuer == <unsigned long>syscall(SYS_gettid)

    cdef int enable(self) except -1:
        cdef int ret
        if not self.enabled:
            ret = io_uring_enable_rings(&self.ring)
            if ret < 0:
                raise OSError(-ret, "io_uring_enable_rings failed")
            self.enabled = True
            self.issuer = <unsigned long>syscall(SYS_gettid)
        elif (self.setup_flags & IORING_SETUP_SINGLE_ISSUER
              and not self.on_issuer_thread()):
            raise RuntimeError(
                "this io_uring loop belongs to another thread: a ring made "
                "with IORING_SETUP_SINGLE_ISSUER takes submissions from the "
                "thread that first ran it")
        return 0

    cdef int submit(self) except -1:
        cdef int ret
        if not self.enabled:
            # (Not enable() each time: its thread check is a gettid(2) per
            # call. The loop checks the thread once, when it starts running;
            # another thread's submission gets the kernel's EEXIST.)
            self.enable()
        ret = io_uring_submit(&self.ring)
        if ret < 0 and ret != -EBUSY and ret != -EAGAIN and ret != -EINTR:
            raise OSError(-ret, f"io_uring_submit failed: {os.strerror(-ret)}")
        return 0

    cdef int wait(self, long timeout_ms, bint signals=True) except -1:
        # Submit what is queued and wait up to timeout_ms (0: not at all,
        # < 0: without limit) for a CQE. A signal runs the Python handlers
        # now (PEP 475): a KeyboardInterrupt must not wait for a completion.
        # signals=False (the loop closing) leaves them for later, and errors
        # too: the caller only waits for CQEs that may come.
        cdef int ret
        cdef io_uring_cqe *cqe
        cdef __kernel_timespec ts
        if not self.enabled:
            self.enable()           # (see submit())
        if timeout_ms == 0:
            with nogil:
                ret = io_uring_submit_and_get_events(&self.ring)
        elif timeout_ms < 0:
            with nogil:
                ret = io_uring_submit_and_wait(&self.ring, 1)
        else:
            ts.tv_sec = timeout_ms // 1000
            ts.tv_nsec = (timeout_ms % 1000) * 1000000
            with nogil:
                ret = io_uring_submit_and_wait_timeout(&self.ring, &cqe, 1,
                                                       &ts, NULL)
        if not signals:
            return 0
        if ret == -EINTR:
            PyErr_CheckSignals()
        elif ret < 0 and ret not in (-ETIME, -EBUSY, -EAGAIN):
            raise OSError(-ret, f"io_uring_enter failed: {os.strerror(-ret)}")
        return 0

    cdef bint has_cqes(self):
        return (io_uring_cq_ready(&self.ring) > 0
                or io_uring_cq_has_overflow(&self.ring))

    cdef unsigned int reap(self) except? 0:
        # Copy up to CQE_BATCH CQEs into cqe_ud/cqe_res/cqe_flags and free
        # their slots; how many.
        cdef io_uring_cqe *cqes[CQE_BATCH]
        cdef unsigned int n, i
        n = io_uring_peek_batch_cqe(&self.ring, cqes, CQE_BATCH)
        if n == 0 and io_uring_cq_has_overflow(&self.ring):
            # The kernel kept CQEs the CQ had no room for
            # (IORING_FEAT_NODROP): have them flushed into it.
            self.overflow_flushes += 1
            io_uring_get_events(&self.ring)
            n = io_uring_peek_batch_cqe(&self.ring, cqes, CQE_BATCH)
        for i in range(n):
            self.cqe_ud[i] = cqes[i].user_data
            self.cqe_res[i] = cqes[i].res
            self.cqe_flags[i] = cqes[i].flags
        io_uring_cq_advance(&self.ring, n)
        return n

    cdef int exit(self) except -1:
        # Tear the ring down. The kernel cancels what is still in flight
        # from its own thread; memory those operations point at must stay
        # (the driver strands it).
        if self.ok:
            self.ok = False
            io_uring_queue_exit(&self.ring)
        return 0


cdef class BufferRing:

    @staticmethod
    cdef BufferRing new(Ring ring, unsigned int count, unsigned int size,
                        int group):
        cdef BufferRing self = BufferRing.__new__(BufferRing)
        cdef unsigned int i
        cdef int err = 0
        self.count = count
        self.size = size
        self.group = group
        self.bufs = <char *>malloc(<size_t>count * (size + BUF_SKEW))
        self.free = <unsigned int *>malloc(count * sizeof(unsigned int))
        if self.bufs == NULL or self.free == NULL:
            raise MemoryError()
        self.br = fs_setup_buf_ring(&ring.ring, count, group, 0, &err)
        if self.br == NULL:
            raise OSError(-err, "registering the provided-buffer ring failed "
                          f"(kernel 5.19+ needed): {os.strerror(-err)}")
        self.mask = io_uring_buf_ring_mask(count)
        # Every buffer starts free; the lowest numbers go in first.
        for i in range(count):
            self.free[i] = count - 1 - i
        self.nfree = count
        self.target = min(count, RING_LEVEL_START)
        self.replenish()
        return self

    cdef char *buf(self, unsigned int bid):
        # Buffers start BUF_SKEW bytes apart beyond their size: at a 32 KiB
        # stride the first cache lines of all of them fall in the same
        # cache sets, and 50 connections' small messages (HTTP requests)
        # evicted each other there (perf: the kernel's copy into them,
        # _copy_to_iter, 0.73% -> 0.45% of an aiohttp server's samples).
        return self.bufs + <size_t>bid * (self.size + BUF_SKEW)

    cdef int taken(self) except -1:
        # The kernel filled a buffer (its CQE is being handled).
        self.in_ring -= 1
        return 0

    cdef int give_back(self, unsigned int bid) except -1:
        # Its bytes have been handed on. It waits on top of the free stack:
        # the next buffers the ring gets are the ones used last, still in
        # the cache (a ring that cycles through all of them writes each
        # recv into cold memory: measured, the kernel's copy then costs
        # twice as much for 64 KiB messages).
        self.free[self.nfree] = bid
        self.nfree += 1
        return 0

    cdef int ran_dry(self) except -1:
        # ENOBUFS: recvs came faster than the ring's level allowed.
        self.target = min(self.count, self.target * 2)
        return 0

    cdef int replenish(self) except -1:
        # Keep `target` buffers where the kernel can pick them, no more.
        # With DEFER_TASKRUN the kernel fills buffers only inside
        # io_uring_enter(): the driver calls this before each wait.
        cdef unsigned int bid
        cdef int added = 0
        while self.in_ring < self.target and self.nfree > 0:
            self.nfree -= 1
            bid = self.free[self.nfree]
            io_uring_buf_ring_add(self.br, self.buf(bid), self.size, bid,
                                  self.mask, added)
            added += 1
            self.in_ring += 1
        if added:
            io_uring_buf_ring_advance(self.br, added)
        return 0

    cdef int strand(self) except -1:
        # A recv the kernel never completed may still write here: never
        # free this memory.
        self.br = NULL
        self.bufs = NULL
        return 0

    def __dealloc__(self):
        # Dropped after its ring has exited (the kernel no longer knows the
        # registration), so only the memory goes.
        if self.br != NULL:
            munmap(self.br, <size_t>self.count * BUF_RING_ENTRY)
        if self.bufs != NULL:
            free(self.bufs)
        if self.free != NULL:
            free(self.free)
