# cython: language_level=3
"""Callback handles, as asyncio.Handle and asyncio.TimerHandle behave."""

import sys
from asyncio import format_helpers

cimport cython

cdef extern from "Python.h":
    # Context.run() without its bound method and argument tuple
    # (Include/cpython/context.h; RuntimeError if already entered).
    bint PyContext_CheckExact(object obj)
    int PyContext_Enter(object ctx) except -1
    int PyContext_Exit(object ctx) except -1


# A handle is made and dropped for nearly every callback: reuse the memory.
@cython.freelist(256)
cdef class Handle:

    def __init__(self, *args, **kwargs):
        raise TypeError("handles are made by loop.call_soon() and friends")

    @staticmethod
    cdef Handle new(object loop, object callback, tuple args, object context,
                    bint debug):
        cdef Handle self = Handle.__new__(Handle)
        self.init(loop, callback, args, context, debug)
        return self

    cdef int init(self, object loop, object callback, tuple args,
                  object context, bint debug) except -1:
        self.loop = loop
        self.callback = callback
        self.args = args
        self.context = context
        if debug:
            # No frame is this code's or the loop method's (Cython): the
            # innermost Python frame is the caller of call_soon() and
            # friends, where asyncio's traceback ends as well.
            try:
                frame = sys._getframe(0)
            except ValueError:          # called from C, no Python frame
                self._source_traceback = []
            else:
                self._source_traceback = format_helpers.extract_stack(frame)
        return 0

    cdef int run(self) except -1:
        try:
            if self.context is None:
                self.callback(*self.args)
            elif not PyContext_CheckExact(self.context):
                # asyncio only asks for a run() method
                self.context.run(self.callback, *self.args)
            else:
                PyContext_Enter(self.context)
                try:
                    self.callback(*self.args)
                finally:
                    PyContext_Exit(self.context)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            cb = format_helpers._format_callback_source(self.callback,
                                                        self.args)
            report = {
                'message': f'Exception in callback {cb}',
                'exception': exc,
                'handle': self,
            }
            if self._source_traceback:
                report['source_traceback'] = self._source_traceback
            self.loop.call_exception_handler(report)
        return 0

    def _run(self):
        self.run()

    @property
    def _callback(self):
        return self.callback

    @property
    def _args(self):
        return self.args

    def get_context(self):
        return self.context

    def cancel(self):
        if not self._cancelled:
            self._cancelled = True
            if self.loop is not None and self.loop._debug:
                # Keep the callback in debug mode for __repr__.
                return
            self.callback = None
            self.args = None

    def cancelled(self):
        return self._cancelled

    def _repr_info(self):
        info = [type(self).__name__]
        if self._cancelled:
            info.append('cancelled')
        if self.callback is not None:
            info.append(format_helpers._format_callback_source(
                self.callback, self.args))
        if self._source_traceback:
            frame = self._source_traceback[-1]
            info.append(f'created at {frame[0]}:{frame[1]}')
        return info

    def __repr__(self):
        return '<{}>'.format(' '.join(self._repr_info()))


cdef class TimerHandle(Handle):

    @staticmethod
    cdef TimerHandle new_timer(object loop, double when, object callback,
                               tuple args, object context, bint debug):
        cdef TimerHandle self = TimerHandle.__new__(TimerHandle)
        self.init(loop, callback, args, context, debug)
        self._when = when
        return self

    def when(self):
        return self._when

    def cancel(self):
        if not self._cancelled:
            if self._scheduled:
                self.loop._timer_handle_cancelled(self)
            Handle.cancel(self)

    def __richcmp__(self, other, int op):
        if not isinstance(other, TimerHandle):
            return NotImplemented
        cdef double a = self._when, b = (<TimerHandle>other)._when
        if op == 0:
            return a < b
        if op == 1:
            return a <= b
        if op == 4:
            return a > b
        if op == 5:
            return a >= b
        same = (a == b and self.callback == (<TimerHandle>other).callback
                and self.args == (<TimerHandle>other).args
                and self._cancelled == (<TimerHandle>other)._cancelled)
        return same if op == 2 else not same

    def __hash__(self):
        return hash(self._when)

    def _repr_info(self):
        info = Handle._repr_info(self)
        info.insert(2 if self._cancelled else 1, f'when={self._when}')
        return info
