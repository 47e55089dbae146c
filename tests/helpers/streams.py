"""Streams for the tests: StreamPair (a listening server and one connected
client, over TCP or a Unix socket; STREAM_KINDS names both) and TCP sockets
with small kernel buffers (to reach flow control with little data)."""

import asyncio
import socket

from .addresses import abstract_name
from .protocols import RecordingProtocol

STREAM_KINDS = ["tcp", "unix"]


def small_buffer_listener(family=socket.AF_INET, host="127.0.0.1", rcvbuf=65536):
    """A bound, non-listening TCP socket whose accepted sockets inherit a small
    receive buffer (setting SO_RCVBUF turns off autotuning)."""
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind((host, 0))
    return s


def small_buffer_client(family=socket.AF_INET, sndbuf=65536, rcvbuf=65536):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.setblocking(False)
    return s


class StreamPair:
    """``async with StreamPair(loop, kind) as p``: a listening server and one
    connected client.  ``p.client`` / ``p.server`` are the protocols on each
    side (``p.client.transport`` etc.).  On exit every transport is aborted,
    the server closed, and connection_lost awaited."""

    def __init__(self, loop, kind, server_factory=None, client_factory=None,
                 server_sock=None, client_sock=None, **server_kwargs):
        self.loop = loop
        self.kind = kind
        self.server_factory = server_factory or RecordingProtocol
        self.client_factory = client_factory or RecordingProtocol
        self.server_sock = server_sock
        self.client_sock = client_sock
        self.server_kwargs = server_kwargs
        self.server_protos = []
        self.server = None
        self.client = None
        self.client_transport = None

    def _make_server_proto(self):
        p = self.server_factory()
        self.server_protos.append(p)
        self._first.done() or self._first.set_result(p)
        return p

    async def __aenter__(self):
        loop = self.loop
        self._first = loop.create_future()
        try:
            if self.kind == "tcp":
                if self.server_sock is not None:
                    self.server = await loop.create_server(
                        self._make_server_proto, sock=self.server_sock,
                        **self.server_kwargs)
                else:
                    self.server = await loop.create_server(
                        self._make_server_proto, "127.0.0.1", 0,
                        **self.server_kwargs)
                self.address = self.server.sockets[0].getsockname()
                if self.client_sock is not None:
                    await loop.sock_connect(self.client_sock, self.address)
                    tr, proto = await loop.create_connection(
                        self.client_factory, sock=self.client_sock)
                else:
                    tr, proto = await loop.create_connection(
                        self.client_factory, *self.address)
            elif self.kind == "unix":
                self.address = abstract_name("pair")
                self.server = await loop.create_unix_server(
                    self._make_server_proto, self.address,
                    **self.server_kwargs)
                tr, proto = await loop.create_unix_connection(
                    self.client_factory, self.address)
            else:
                raise ValueError(self.kind)
            self.client_transport = tr
            self.client = proto
            self.server_proto = await self._first
            made = getattr(self.server_proto, "made", None)
            if made is not None:
                await made
            else:
                while getattr(self.server_proto, "transport", None) is None:
                    await asyncio.sleep(0)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc):
        protos = list(self.server_protos)
        if self.client is not None:
            protos.append(self.client)
        # (Aborting a transport whose connection_lost already ran is not
        # safe on stock asyncio: a transport closed after flushing its
        # buffer raises AttributeError from abort().)
        for p in protos:
            tr = getattr(p, "transport", None)
            lost = getattr(p, "lost", None)
            if tr is not None and not (lost is not None and lost.done()):
                tr.abort()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for p in protos:
            lost = getattr(p, "lost", None)
            if lost is not None and getattr(p, "transport", None) is not None:
                await asyncio.wait_for(asyncio.shield(lost), 10)
        # Let transports finish their close callbacks.
        for _ in range(3):
            await asyncio.sleep(0)
