# Included into transports.pyx (one module: the kinds call each other's
# cdef methods directly). loop.sock_sendfile() on a user's socket.

cdef class FileSender(Endpoint):
    """loop.sock_sendfile(): a user's socket lent to the driver for one
    file transfer (it does not own the fd); the result future resolves
    once the driver has forgotten the fd."""

    cdef int on_sent(self, Request req, Py_ssize_t res) except -1:
        self.loop.driver.sendfile_bytes += req.done
        self.seg.sent = req.done
        self.seg.offset += req.done
        self.seg.remaining -= req.done
        if res < 0 and res != -ECANCELED:
            self.error = errno_error(<int>-res)
        self.seg.request = None
        return self.loop.driver.release(self)

    cdef int on_released(self) except -1:
        if self.seg.done.done() or self.loop.closed:
            return 0
        if self.error is not None:
            self.seg.done.set_exception(self.error)
        else:
            self.seg.done.set_result(self.seg.sent)
        return 0

    def cancel(self):
        # Stop the transfer; `done` resolves (bytes sent) once the kernel
        # no longer works on it and the fd is the caller's again.
        if self.seg.request is not None:
            self.loop.driver.cancel_send(self, self.seg.request)


def send_file(CoreLoop loop, int sock_fd, int file_fd, long long offset,
              Py_ssize_t count):
    """Send `count` bytes of file_fd from `offset` to the socket sock_fd
    (not owned: the caller keeps it). Returns the FileSender: its `seg.done`
    future gives the bytes sent (fewer if the file ends first) once the
    loop no longer uses the socket; its cancel() stops the transfer."""
    cdef FileSender sender = FileSender.__new__(FileSender)
    cdef FileSegment seg = FileSegment.__new__(FileSegment)
    cdef Request req
    seg.fd = file_fd
    seg.offset = offset
    seg.remaining = count
    seg.done = loop.create_future()
    sender.fd = sock_fd
    sender.kind = KIND_STREAM
    sender.loop = loop
    sender.seg = seg
    loop.driver.add(sender)
    req = Request.file_span(sender, file_fd, offset, count)
    seg.request = req
    loop.driver.send(sender, req, True)
    return sender
