# cython: language_level=3
"""Can the io_uring driver run on this host, and with what.

probe() answers once per process, on a ring of its own: io_uring_setup
allowed (a seccomp filter or kernel.io_uring_disabled may refuse it), the
setup flags the kernel takes, the opcodes fastsock uses (IORING_REGISTER_PROBE)
and multishot recv, which no probe reports (tried on a socketpair).
"""

import io
import os
import socket

from libc.stdint cimport uint32_t

from fastsock.system cimport *
from fastsock.liburing cimport *
from fastsock.ring cimport Ring, BufferRing

cdef extern from *:
    const char *FASTSOCK_LIBURING_VERSION

LIBURING_VERSION = FASTSOCK_LIBURING_VERSION.decode()

_SETUP_FLAG_NAMES = {
    IORING_SETUP_SINGLE_ISSUER: "SINGLE_ISSUER",
    IORING_SETUP_DEFER_TASKRUN: "DEFER_TASKRUN",
    IORING_SETUP_COOP_TASKRUN: "COOP_TASKRUN",
    IORING_SETUP_TASKRUN_FLAG: "TASKRUN_FLAG",
    IORING_SETUP_CQSIZE: "CQSIZE",
    IORING_SETUP_SUBMIT_ALL: "SUBMIT_ALL",
    IORING_SETUP_R_DISABLED: "R_DISABLED",
}

# The opcodes the driver cannot do without.
_REQUIRED_OPS = {
    IORING_OP_POLL_ADD: "POLL_ADD", IORING_OP_POLL_REMOVE: "POLL_REMOVE",
    IORING_OP_SENDMSG: "SENDMSG", IORING_OP_RECVMSG: "RECVMSG",
    IORING_OP_ACCEPT: "ACCEPT", IORING_OP_ASYNC_CANCEL: "ASYNC_CANCEL",
    IORING_OP_RECV: "RECV", IORING_OP_SEND: "SEND",
    IORING_OP_CONNECT: "CONNECT",
}
_OPTIONAL_OPS = {
    IORING_OP_SPLICE: "SPLICE",
    IORING_OP_SHUTDOWN: "SHUTDOWN", IORING_OP_SEND_ZC: "SEND_ZC",
    IORING_OP_SENDMSG_ZC: "SENDMSG_ZC",
}

_probe_result = None
_PASSING_ERRNOS = (EMFILE, ENFILE, ENOMEM, ENOBUFS, EAGAIN)


def _io_uring_disabled_sysctl():
    try:
        with io.open("/proc/sys/kernel/io_uring_disabled") as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return None


cdef object _check_multishot_recv(Ring ring, BufferRing bufs):
    # Multishot recv (kernel 6.0+) cannot be seen in the opcode probe: try
    # it on a socketpair and look for IORING_CQE_F_MORE.
    cdef io_uring_sqe *sqe
    cdef io_uring_cqe *cqe
    cdef __kernel_timespec ts
    cdef int ret, res = 0
    cdef uint32_t flags = 0
    a, b = socket.socketpair()
    try:
        ring.enable()
        sqe = ring.get_sqe()
        io_uring_prep_recv_multishot(sqe, a.fileno(), NULL, 0, 0)
        sqe.flags |= IOSQE_BUFFER_SELECT
        sqe.buf_group = 0
        io_uring_sqe_set_data64(sqe, 1)
        b.send(b"x")
        ts.tv_sec = 1
        ts.tv_nsec = 0
        ret = io_uring_submit_and_wait_timeout(&ring.ring, &cqe, 1, &ts, NULL)
        while io_uring_peek_batch_cqe(&ring.ring, &cqe, 1) == 1:
            if cqe.user_data == 1:
                res = cqe.res
                flags = cqe.flags
                io_uring_cq_advance(&ring.ring, 1)
                break
            io_uring_cq_advance(&ring.ring, 1)
        ended = not (flags & IORING_CQE_F_MORE)
        if not ended:
            # End the multishot (EOF from the closed peer) and collect its
            # last CQE, so nothing is in flight when the ring and its
            # buffers go away.
            b.close()
            for _ in range(100):
                io_uring_submit_and_wait_timeout(&ring.ring, &cqe, 1, &ts, NULL)
                while io_uring_peek_batch_cqe(&ring.ring, &cqe, 1) == 1:
                    if cqe.user_data == 1 and not cqe.flags & IORING_CQE_F_MORE:
                        ended = True
                    io_uring_cq_advance(&ring.ring, 1)
                if ended:
                    break
            if not ended:
                bufs.strand()  # never completed: never free its buffers
        if res == 1 and flags & IORING_CQE_F_MORE:
            return ""
        if res < 0:
            return f"multishot recv unsupported: {os.strerror(-res)}"
        return "multishot recv unsupported (kernel 6.0+ needed)"
    finally:
        a.close()
        b.close()


def probe():
    """Can the io_uring driver run here, and with what.

    Returns a dict: available (bool), reason (why not, "" if it can),
    setup_flags (names the kernel accepted), opcodes (supported names of
    those fastsock uses), liburing_version (built against), kernel.
    The answer is a property of the host and computed once per process.
    Raises OSError for a passing condition of this process (out of file
    descriptors or memory: EMFILE, ENFILE, ENOMEM, ENOBUFS, EAGAIN), which
    is not remembered: the next call probes again."""
    global _probe_result
    if _probe_result is not None:
        return dict(_probe_result)
    cdef Ring ring = None
    cdef io_uring_probe *p
    result = {
        "available": False, "reason": "", "setup_flags": [], "opcodes": [],
        "liburing_version": LIBURING_VERSION, "kernel": os.uname().release,
    }
    disabled = _io_uring_disabled_sysctl()
    try:
        ring = Ring.new(8, 64)
    except OSError as exc:
        if exc.errno in _PASSING_ERRNOS:
            raise
        if exc.errno == EPERM:
            why = "io_uring_setup() was refused with EPERM"
            if disabled:
                why += f" (kernel.io_uring_disabled = {disabled})"
            else:
                why += (" (a seccomp filter, e.g. a container's default "
                        "profile, blocks it)")
        elif exc.errno == ENOSYS:
            why = "this kernel has no io_uring (ENOSYS)"
        else:
            why = str(exc)
        result["reason"] = why
        _probe_result = result
        return dict(result)
    try:
        result["setup_flags"] = [name for bit, name in _SETUP_FLAG_NAMES.items()
                                 if ring.setup_flags & bit]
        p = io_uring_get_probe_ring(&ring.ring)
        if p == NULL:
            result["reason"] = "io_uring opcode probe failed (kernel < 5.6)"
        else:
            try:
                missing = [name for op, name in _REQUIRED_OPS.items()
                           if not io_uring_opcode_supported(p, op)]
                result["opcodes"] = [
                    name for op, name in {**_REQUIRED_OPS, **_OPTIONAL_OPS}.items()
                    if io_uring_opcode_supported(p, op)]
            finally:
                io_uring_free_probe(p)
            if missing:
                result["reason"] = ("io_uring lacks opcodes: "
                                    + ", ".join(missing))
            else:
                # the buffers outlive the ring (dropped after ring.exit())
                try:
                    bufs = BufferRing.new(ring, 8, 4096, 0)
                except OSError as exc:
                    if exc.errno in _PASSING_ERRNOS:
                        raise
                    result["reason"] = str(exc)
                else:
                    result["reason"] = _check_multishot_recv(ring, bufs)
                if not result["reason"]:
                    result["opcodes"].append("RECV_MULTISHOT")
        result["available"] = not result["reason"]
    finally:
        ring.exit()
    _probe_result = result
    return dict(result)
