cdef class Handle:
    cdef:
        object callback
        tuple args
        object context
        object loop
        readonly bint _cancelled
        readonly object _source_traceback
        object __weakref__

    @staticmethod
    cdef Handle new(object loop, object callback, tuple args, object context,
                    bint debug)
    cdef int init(self, object loop, object callback, tuple args,
                  object context, bint debug) except -1
    cdef int run(self) except -1


cdef class TimerHandle(Handle):
    cdef:
        readonly double _when
        public bint _scheduled

    @staticmethod
    cdef TimerHandle new_timer(object loop, double when, object callback,
                               tuple args, object context, bint debug)
