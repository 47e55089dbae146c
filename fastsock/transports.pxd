from fastsock.driver cimport Driver, Endpoint, Request
from fastsock.loop cimport CoreLoop


cdef class BaseTransport(Endpoint):
    # What stream and datagram transports share: lifecycle and flow control.
    # Lifecycle: open -> closing (close(): the write buffer drains) -> released
    # (the driver forgot the fd) -> closed (connection_lost ran, fd closed).
    cdef:
        CoreLoop loop
        object sock                 # the socket object, or None (the_socket)
        int family, stype, proto
        object protocol
        dict extra                  # None until asked for (fill_extra)
        object server
        bint closing
        bint paused                 # pause_reading()
        bint protocol_paused        # pause_writing() sent to the protocol
        int conn_lost
        Py_ssize_t high_water       # flow control marks, in whole bytes
        Py_ssize_t low_water
        object limits               # (low, high) as given, if not ints
        object lost_exc
        object leftovers            # sock_methods.Leftovers, or None
        object __weakref__

    cdef int setup(self, CoreLoop loop, object sock, object protocol,
                   object extra, object server) except -1
    cdef int start(self, object waiter) except -1
    cdef int fill_extra(self, bint with_socket) except -1
    cdef object the_socket(self)
    cdef int close_fd(self) except -1
    cdef Py_ssize_t buffered_size(self)
    cdef bint has_unsent(self)
    cdef int drop_unsent(self, object exc) except -1
    cdef int begin_release(self, object exc) except -1
    cdef int read_start(self) except -1
    cdef int feed_leftover(self, object item, object addr) except -1
    cdef int callback_failed(self, object exc, str callback) except -1
    cdef int fatal_error(self, object exc, str message) except -1
    cdef int force_close(self, object exc) except -1
    cdef int maybe_pause_protocol(self) except -1
    cdef int maybe_resume_protocol(self) except -1


cdef class FileSegment:
    # A stretch of a file queued by loop.sendfile() or lent to one
    # sock_sendfile(): sent by the driver as a REQ_SENDFILE Request, not
    # counted in the write buffer size.
    cdef:
        int fd
        long long offset
        Py_ssize_t remaining
        readonly Py_ssize_t sent
        readonly object done        # future: total bytes sent
        Request request             # the driver's, while it sends


cdef class PinnedBuffer:
    # A caller's buffer for write_zerocopy(): exported (pinned) while queued
    # or in flight; its future resolves when the last reference goes, i.e.
    # when the kernel has released the memory.
    cdef:
        Py_buffer view
        bint has_view
        bint sent_all
        object done
        CoreLoop loop

    @staticmethod
    cdef PinnedBuffer new(CoreLoop loop, object data, object done)


cdef enum:
    # bytes one gathered send Request carries at most: the write buffer's
    # size drops (and resume_writing() comes) as each one completes
    SEND_BYTES_MAX = 1024 * 1024


cdef class TLSTransport


cdef class TLSProtocol:
    # TLS over a stream (endpoints/tls.pxi): asyncio's SSLProtocol.
    cdef:
        CoreLoop loop
        object transport            # the stream's transport
        object app_protocol
        bint app_buffered           # app_protocol is a BufferedProtocol
        object app_get_buffer, app_buffer_updated, app_data_received
        TLSTransport app_transport  # None once the connection is lost
        object waiter               # the handshake's future
        object handshake_timeout, shutdown_timeout      # seconds
        object handshake_timer, shutdown_timer
        double handshake_start
        bint server_side
        object server_hostname
        dict extra
        object backlog              # deque: application data not encrypted
        Py_ssize_t backlog_size     # bytes in it
        int state                   # TLSState
        int app_state               # AppState
        int conn_lost
        bint eof                    # the stream's eof_received()
        bint app_reading_paused     # the application's pause_reading()
        bint app_writing_paused     # pause_writing() sent to the application
        bint stream_reading_paused  # we paused the stream's reading
        bint stream_writing_paused  # the stream sent us pause_writing()
        Py_ssize_t in_high, in_low  # ciphertext held unread (bytes)
        Py_ssize_t out_high, out_low    # write_buffer_size() marks (bytes)
        tuple in_limits, out_limits # (low, high) as given
        object incoming, outgoing   # ssl.MemoryBIO: ciphertext in and out
        object sslobj               # ssl.SSLObject (or the context's class)
        object engine               # what SSL calls go to (tls.pxi)
        object recv_view            # get_buffer()'s, made when first asked
        object __weakref__

    cdef int set_app_protocol(self, object protocol) except -1
    cdef int set_write_limits(self, object high, object low) except -1
    cdef int set_read_limits(self, object high, object low) except -1
    cdef bint stream_closing(self) except -1
    cdef int check_thread(self) except -1
    cdef int wake_waiter(self, object exc) except -1
    cdef object extra_info(self, name, default)
    cdef int cancel_timers(self) except -1
    cdef int feed(self, const char *buf, Py_ssize_t n) except -1
    cdef int advance(self) except -1
    cdef int do_handshake(self) except -1
    cdef int handshake_done(self, object exc) except -1
    cdef int start_shutdown(self) except -1
    cdef int do_flush(self) except -1
    cdef int do_shutdown(self) except -1
    cdef int shutdown_done(self, object exc) except -1
    cdef int abort(self, object exc) except -1
    cdef int write_appdata(self, object data) except -1
    cdef int write_appdata_list(self, object list_of_data) except -1
    cdef int do_write(self) except -1
    cdef int process_outgoing(self) except -1
    cdef Py_ssize_t write_buffer_size(self) except -1
    cdef int control_app_writing(self) except -1
    cdef int do_read(self) except -1
    cdef bint more_to_read(self) except -1
    cdef int read_copied(self) except -1
    cdef int read_into_protocol(self) except -1
    cdef int call_eof_received(self) except -1
    cdef int control_stream_reading(self) except -1
    cdef int resume_app_reading(self) except -1
    cdef int fatal_error(self, object exc, str message) except -1


cdef class TLSTransport:
    cdef:
        CoreLoop loop
        TLSProtocol tls
        bint closed
        object __weakref__


cdef class StreamTransport(BaseTransport):
    cdef:
        list wbuf                   # the write buffer: bytes, PinnedBuffer
                                    # or FileSegment; None when empty
        Py_ssize_t wbuf_start       # first live entry of wbuf
        Py_ssize_t wbuf_offset      # bytes of wbuf[wbuf_start] already sent
        Py_ssize_t wbuf_size
        bint eof                    # write_eof() called
        bint buffered               # protocol is a BufferedProtocol
        object data_received        # the protocol's bound method
        TLSProtocol tls             # the protocol, if fastsock's TLS: fed
                                    # without get_buffer()
        bytes unfed                 # read, not yet fed to a paused
                                    # BufferedProtocol
        object empty_waiter
        Py_ssize_t zc_threshold     # bytes writes this large go zero-copy
        bint zc_enabled             # off once the kernel copied anyway
        # counters (zerocopy_stats())
        unsigned long long zc_sends, zc_bytes, zc_copied, sendfile_bytes

    @staticmethod
    cdef StreamTransport new(CoreLoop loop, object sock, object protocol,
                             object waiter, object extra, object server)
    @staticmethod
    cdef StreamTransport accepted(CoreLoop loop, int fd, int family,
                                  int stype, int proto, object protocol,
                                  object server)
    cdef int prepare(self) except -1
    cdef int write_data(self, object data) except -1
    cdef int queue(self, object data, Py_ssize_t skip) except -1
    cdef bint zc_eligible(self, object entry)
    cdef int start_send(self, bint now) except -1
    cdef int advance(self, Py_ssize_t n) except -1
    cdef int after_sent(self) except -1
    cdef int file_sent(self, FileSegment seg) except -1
    cdef int fail_files(self, object exc) except -1
    cdef int feed_buffered(self, const char *buf, Py_ssize_t n) except -1
    cdef int drained(self) except -1
    cdef int on_send_error(self, int err) except -1


cdef class DatagramTransport(BaseTransport):
    cdef:
        object address
        int family
        Py_ssize_t dbuf_size        # bytes given to the driver, not yet sent
        bint connected

    @staticmethod
    cdef DatagramTransport new(CoreLoop loop, object sock, object protocol,
                               object address, object waiter, object extra)
    cdef int send_through_socket(self, object data, object addr) except -1
    cdef int report_error(self, object exc) except -1


cdef class FileSender(Endpoint):
    # loop.sock_sendfile(): a user's socket lent for one transfer. It does
    # not own the fd; the driver sends the file and the result future
    # resolves once the driver has forgotten the fd.
    cdef:
        CoreLoop loop
        readonly FileSegment seg
        object error


cdef class Listener(Endpoint):
    cdef:
        CoreLoop loop
        object sock
        object protocol_factory
        object sslcontext
        object server
        object ssl_handshake_timeout
        object ssl_shutdown_timeout
        int family
        int type
        int proto
        object leftovers            # sock_methods.Leftovers, or None
