# cython: language_level=3
"""Stream, datagram and listening-socket transports.

One class per kind, shared by both drivers: these classes receive events
through the Endpoint contract (driver.pxd) and never learn which driver
feeds them. Their behaviour follows asyncio's selector transports (the
reference for every message, exception and callback order here).

Each kind is a file of its own in endpoints/, included here (as uvloop
includes its handles): one extension module, so that a stream transport
calls its base class's and the loop's cdef methods without a module
boundary, and transports.pxd is the one contract for all of them.
  endpoints/base.pxi         BaseTransport: lifecycle, flow control, errors
  endpoints/stream.pxi       StreamTransport (+ PinnedBuffer, FileSegment)
  endpoints/datagram.pxi     DatagramTransport
  endpoints/file_sender.pxi  FileSender: loop.sock_sendfile()
  endpoints/listener.pxi     Listener: accept -> StreamTransport
  endpoints/tls.pxi          TLSProtocol, TLSTransport: TLS over a stream
"""

import collections
import functools
import logging
import math
import os
import socket
import ssl
import sys
import warnings

from asyncio import constants, exceptions, futures, protocols, sslproto
from asyncio import transports, trsock
from asyncio import base_events

from cpython.buffer cimport (PyObject_GetBuffer, PyBuffer_Release,
                             PyBUF_SIMPLE, PyBUF_WRITABLE, PyBUF_READ)
from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.memoryview cimport PyMemoryView_FromMemory

cdef extern from "pythread.h":
    # threading.get_ident(): unsigned since Python 3.7
    unsigned long PyThread_get_thread_ident()
from cpython.bytes cimport (PyBytes_AS_STRING, PyBytes_GET_SIZE,
                            PyBytes_FromStringAndSize)
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy, strlen

from fastsock.driver cimport *
from fastsock.system cimport *
from fastsock.loop cimport CoreLoop
from fastsock.sockaddr cimport sockaddr_to_py, local_address, peer_address

logger = logging.getLogger('asyncio')

cdef object BufferedProtocol = protocols.BufferedProtocol
cdef object TransportSocket = trsock.TransportSocket
cdef object set_result_unless_cancelled = futures._set_result_unless_cancelled


# asyncio.Server counts the connections it serves, to tell wait_closed()
# when the last one is gone. Python 3.13 keeps the transports themselves in a
# weak set instead, for Server.close_clients()/abort_clients() (gh-113538), so
# _attach()/_detach() take the transport there and nothing before.
cdef bint SERVER_KEEPS_TRANSPORTS = sys.version_info >= (3, 13)


cdef server_attach(object server, object transport):
    if SERVER_KEEPS_TRANSPORTS:
        server._attach(transport)
    else:
        server._attach()


cdef server_detach(object server, object transport):
    if SERVER_KEEPS_TRANSPORTS:
        server._detach(transport)
    else:
        server._detach()


cdef object errno_error(int err):
    # OSError(errno, ...) picks the subclass asyncio raises
    # (ConnectionResetError, BrokenPipeError, ...).
    return OSError(err, os.strerror(err))


include "endpoints/base.pxi"
include "endpoints/stream.pxi"
include "endpoints/datagram.pxi"
include "endpoints/file_sender.pxi"
include "endpoints/listener.pxi"
include "endpoints/tls.pxi"


def make_stream_transport(CoreLoop loop, sock, protocol, waiter=None,
                          extra=None, server=None):
    return StreamTransport.new(loop, sock, protocol, waiter, extra, server)


def make_datagram_transport(CoreLoop loop, sock, protocol, address=None,
                            waiter=None, extra=None):
    return DatagramTransport.new(loop, sock, protocol, address, waiter, extra)


def start_listener(CoreLoop loop, sock, protocol_factory, sslcontext, server,
                   ssl_handshake_timeout, ssl_shutdown_timeout,
                   leftovers=None):
    return Listener.start(loop, sock, protocol_factory, sslcontext, server,
                          ssl_handshake_timeout, ssl_shutdown_timeout,
                          leftovers)
