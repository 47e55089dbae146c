# cython: language_level=3
"""The loop core: ready queue, timer heap, run/stop, thread-safe wakeup and
fd watchers. The asyncio surface above it lives in fastsock/eventloop.py.

The driver waits with a timeout taken from the timer heap; one iteration
runs every handle that was ready when it started, as asyncio does.
"""

import heapq
import logging
import sys
import threading

from asyncio import base_events, events, futures, tasks
from selectors import _fileobj_to_fd
from libc.math cimport ceil
from libc.stdint cimport uint32_t

from fastsock.driver cimport *
from fastsock.system cimport POLLIN, POLLOUT, POLLERR, POLLHUP

logger = logging.getLogger('asyncio')

cdef extern from "<time.h>" nogil:
    ctypedef int clockid_t
    struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(clockid_t clk, timespec *tp)
    int clock_getres(clockid_t clk, timespec *tp)
    enum:
        CLOCK_MONOTONIC

cdef enum:
    # asyncio's thresholds for purging cancelled timers from the heap
    MIN_SCHEDULED_TIMER_HANDLES = 100
cdef double MIN_CANCELLED_TIMER_HANDLES_FRACTION = 0.5
# the longest epoll/io_uring wait, as asyncio caps it (one day)
cdef double MAXIMUM_SELECT_TIMEOUT = 24 * 3600


cdef class Watcher(Endpoint):

    @staticmethod
    cdef Watcher new(CoreLoop loop, int fd):
        cdef Watcher self = Watcher.__new__(Watcher)
        self.fd = fd
        self.kind = KIND_WATCHER
        self.loop = loop
        return self

    cdef int update(self) except -1:
        cdef uint32_t events = 0
        if self.reader is not None:
            events |= POLLIN
        if self.writer is not None:
            events |= POLLOUT
        return self.loop.driver.watch(self, events)

    cdef int on_ready(self, uint32_t revents) except -1:
        # Errors and hangups wake both sides, as selectors report them.
        cdef bint bad = (revents & (POLLERR | POLLHUP)) != 0
        cdef Handle h
        if self.reader is not None and (revents & POLLIN or bad):
            h = self.reader
            if h._cancelled:
                self.loop.remove_watch(self.fd, False)
            else:
                self.loop.io_ready.append(h)
        if self.writer is not None and (revents & POLLOUT or bad):
            h = self.writer
            if h._cancelled:
                self.loop.remove_watch(self.fd, True)
            else:
                self.loop.io_ready.append(h)
        return 0


cdef class CoreLoop:

    def __cinit__(self):
        cdef timespec res
        self.ready = []
        self.io_ready = []
        self.timers = []
        self.watchers = {}
        clock_getres(CLOCK_MONOTONIC, &res)
        self.clock_resolution = res.tv_sec + res.tv_nsec * 1e-9

    # Attributes that asyncio.BaseEventLoop's own methods read and write.
    @property
    def _closed(self):
        return self.closed

    @_closed.setter
    def _closed(self, value):
        self.closed = value

    @property
    def _stopping(self):
        return self.stopping

    @_stopping.setter
    def _stopping(self, value):
        self.stopping = value

    @property
    def _thread_id(self):
        return self.thread_id

    @_thread_id.setter
    def _thread_id(self, value):
        self.thread_id = value

    @property
    def _debug(self):
        return self.debug

    @_debug.setter
    def _debug(self, value):
        self.debug = value

    @property
    def _ready(self):
        return self.ready

    @_ready.setter
    def _ready(self, value):
        self.ready = list(value)

    @property
    def _scheduled(self):
        return self.timers

    @_scheduled.setter
    def _scheduled(self, value):
        self.timers = list(value)
        heapq.heapify(self.timers)

    @property
    def _clock_resolution(self):
        return self.clock_resolution

    @_clock_resolution.setter
    def _clock_resolution(self, value):
        pass

    @property
    def _timer_cancelled_count(self):
        return self.timers_cancelled

    @_timer_cancelled_count.setter
    def _timer_cancelled_count(self, value):
        self.timers_cancelled = value

    # -- time and callbacks ------------------------------------------------

    cdef double now(self):
        cdef timespec ts
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return ts.tv_sec + ts.tv_nsec * 1e-9

    def time(self):
        return self.now()

    cdef int check_open(self) except -1:
        if self.closed:
            raise RuntimeError('Event loop is closed')
        return 0

    cdef Handle soon(self, object callback, tuple args, object context):
        cdef Handle h = Handle.new(self, callback, args, context, self.debug)
        self.ready.append(h)
        return h

    def call_soon(self, callback, *args, context=None):
        cdef Handle h
        self.check_open()
        if self.debug:
            self._check_thread()
            self._check_callback(callback, 'call_soon')
        h = self.soon(callback, args, context)
        return h

    def create_task(self, coro, *, name=None, context=None):
        """Schedule a coroutine object; return its Task. As asyncio's
        create_task() (with a task factory set, asyncio's own code runs);
        RuntimeError once the loop is closed."""
        if self._task_factory is not None:
            return base_events.BaseEventLoop.create_task(
                self, coro, name=name, context=context)
        self.check_open()
        # (asyncio drops the last frame of a debug task's source traceback,
        # its own create_task(): this one adds no Python frame.)
        return tasks.Task(coro, loop=self, name=name, context=context)

    # get_debug() and create_future() run per request in HTTP servers
    # (aiohttp, and asyncio's C Task and Future ask get_debug() when they
    # are made): asyncio's are Python functions, these add no frame.

    def get_debug(self):
        """Whether the loop is in debug mode (set_debug())."""
        return self.debug

    def create_future(self):
        """A new asyncio.Future attached to this loop."""
        return futures.Future(loop=self)

    def call_soon_threadsafe(self, callback, *args, context=None):
        cdef Handle h
        self.check_open()
        if self.debug:
            self._check_callback(callback, 'call_soon_threadsafe')
        h = self.soon(callback, args, context)
        # Holding the GIL, we see `polling` as the loop thread left it: it
        # sets the flag and computes its timeout (which sees our handle)
        # without releasing the GIL in between.
        if self.polling:
            self.driver.wakeup()
        return h

    def _write_to_self(self):
        self.driver.wakeup()

    def call_later(self, delay, callback, *args, context=None):
        if delay is None:
            raise TypeError('delay must not be None')
        timer = self.call_at(self.now() + delay, callback, *args,
                             context=context)
        return timer

    def call_at(self, when, callback, *args, context=None):
        cdef TimerHandle timer
        if when is None:
            raise TypeError("when cannot be None")
        self.check_open()
        if self.debug:
            self._check_thread()
            self._check_callback(callback, 'call_at')
        timer = TimerHandle.new_timer(self, when, callback, args, context,
                                       self.debug)
        heapq.heappush(self.timers, timer)
        timer._scheduled = True
        return timer

    def _timer_handle_cancelled(self, handle):
        if handle._scheduled:
            self.timers_cancelled += 1

    # -- running -----------------------------------------------------------

    def run_forever(self):
        self._check_closed()
        self._check_running()
        self.driver.bind_thread()
        self._set_coroutine_origin_tracking(self.debug)
        old_agen_hooks = sys.get_asyncgen_hooks()
        try:
            self.thread_id = threading.get_ident()
            sys.set_asyncgen_hooks(firstiter=self._asyncgen_firstiter_hook,
                                   finalizer=self._asyncgen_finalizer_hook)
            events._set_running_loop(self)
            while True:
                self.run_once()
                if self.stopping:
                    break
        finally:
            self.stopping = False
            self.thread_id = None
            events._set_running_loop(None)
            self._set_coroutine_origin_tracking(False)
            sys.set_asyncgen_hooks(*old_agen_hooks)

    def _run_once(self):
        self.run_once()

    cdef long poll_timeout(self):
        cdef double delay
        cdef TimerHandle first
        if self.ready or self.stopping:
            return 0
        if not self.timers:
            return -1
        first = self.timers[0]
        delay = first._when - self.now()
        if delay <= 0:
            return 0
        if delay > MAXIMUM_SELECT_TIMEOUT:
            delay = MAXIMUM_SELECT_TIMEOUT
        return <long>ceil(delay * 1e3)

    cdef int run_once(self) except -1:
        # The order of one asyncio iteration: the callbacks scheduled before
        # it, then the I/O callbacks of its poll, then the timers due; what
        # these schedule waits for the next iteration. The driver runs
        # transport I/O callbacks inside poll(), so the callbacks scheduled
        # before must run first, not after: e.g. the task awaiting
        # create_connection() resumes before the first data_received().
        cdef TimerHandle timer
        cdef list todo
        cdef double end

        todo = self.ready
        self.ready = []
        self.run_handles(todo)

        self.purge_cancelled_timers()
        self.polling = True
        try:
            self.driver.poll(self.poll_timeout())
        finally:
            self.polling = False

        # Watcher callbacks (add_reader/add_writer) of this poll, then timers.
        todo = self.io_ready
        self.io_ready = []
        end = self.now() + self.clock_resolution
        while self.timers:
            timer = self.timers[0]
            if timer._when >= end:
                break
            heapq.heappop(self.timers)
            timer._scheduled = False
            if timer._cancelled:
                self.timers_cancelled -= 1
            else:
                todo.append(timer)
        return self.run_handles(todo)

    cdef int run_handles(self, list todo) except -1:
        cdef Handle h
        cdef Py_ssize_t i = 0, n = len(todo)
        cdef double t0, dt
        try:
            while i < n:
                obj = todo[i]
                i += 1
                if not isinstance(obj, Handle):
                    # asyncio.Handle from stdlib code (signal handlers)
                    if not obj._cancelled:
                        obj._run()
                    continue
                h = <Handle>obj
                if h._cancelled:
                    continue
                if self.debug:
                    self._current_handle = h
                    try:
                        t0 = self.now()
                        h.run()
                        dt = self.now() - t0
                        if dt >= self.slow_callback_duration:
                            logger.warning('Executing %s took %.3f seconds',
                                           base_events._format_handle(h), dt)
                    finally:
                        self._current_handle = None
                else:
                    h.run()
        except BaseException:
            # KeyboardInterrupt and the like: what did not run stays first.
            if i < n:
                self.ready[0:0] = todo[i:]
            raise
        return 0

    cdef int purge_cancelled_timers(self) except -1:
        cdef Py_ssize_t total = len(self.timers)
        cdef TimerHandle t
        if (total > MIN_SCHEDULED_TIMER_HANDLES and
                self.timers_cancelled / <double>total >
                MIN_CANCELLED_TIMER_HANDLES_FRACTION):
            keep = []
            for t in self.timers:
                if t._cancelled:
                    t._scheduled = False
                else:
                    keep.append(t)
            heapq.heapify(keep)
            self.timers = keep
            self.timers_cancelled = 0
        else:
            while self.timers and (<TimerHandle>self.timers[0])._cancelled:
                t = heapq.heappop(self.timers)
                t._scheduled = False
                self.timers_cancelled -= 1
        return 0

    # -- readiness watchers (add_reader/add_writer) --------------------------

    # Like asyncio, these return the handle: a sock_* call whose handle was
    # replaced by a newer call on the same fd must not remove the newer one.
    def _add_reader(self, fd, callback, *args):
        self.check_open()
        return self.add_watch(_fileobj_to_fd(fd), False, callback, args)

    def _add_writer(self, fd, callback, *args):
        self.check_open()
        return self.add_watch(_fileobj_to_fd(fd), True, callback, args)

    def _remove_reader(self, fd):
        if self.closed:
            return False
        return self.remove_watch(_fileobj_to_fd(fd), False)

    def _remove_writer(self, fd):
        if self.closed:
            return False
        return self.remove_watch(_fileobj_to_fd(fd), True)

    def _set_driver(self, Driver driver):
        self.driver = driver

    def _close_driver(self):
        for w in list(self.watchers.values()):
            self.driver.release(w)
        self.watchers.clear()
        self.driver.close()

    cdef Handle add_watch(self, int fd, bint writer, object callback,
                          tuple args):
        cdef Watcher w = self.watchers.get(fd)
        cdef Handle h = Handle.new(self, callback, args, None, self.debug)
        cdef Handle old
        if w is None:
            w = Watcher.new(self, fd)
            self.driver.add(w)
            self.watchers[fd] = w
        if writer:
            old, w.writer = w.writer, h
        else:
            old, w.reader = w.reader, h
        if old is not None:
            old.cancel()
        w.update()
        return h

    cdef bint remove_watch(self, int fd, bint writer) except -1:
        cdef Watcher w = self.watchers.get(fd)
        cdef Handle old
        if w is None:
            return False
        if writer:
            old, w.writer = w.writer, None
        else:
            old, w.reader = w.reader, None
        if old is None:
            return False
        old.cancel()
        if w.reader is None and w.writer is None:
            del self.watchers[fd]
            self.driver.release(w)
        else:
            w.update()
        return True
