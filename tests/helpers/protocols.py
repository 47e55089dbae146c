"""Protocols for the tests: RecordingProtocol (every callback in order,
futures for the milestones) and EchoProtocol."""

import asyncio


class RecordingProtocol(asyncio.Protocol):
    """Records every callback in order; exposes futures for the milestones."""

    def __init__(self, loop=None, eof_keep_open=False, on_made=None):
        self.loop = loop or asyncio.get_event_loop()
        self.events = []
        self.data = bytearray()
        self.transport = None
        self.made = self.loop.create_future()
        self.eof = self.loop.create_future()
        self.lost = self.loop.create_future()
        self.paused = self.loop.create_future()
        self.resumed = self.loop.create_future()
        self.eof_keep_open = eof_keep_open
        self.on_made = on_made
        self.data_waiters = []

    def connection_made(self, transport):
        self.events.append("made")
        self.transport = transport
        if self.on_made is not None:
            self.on_made(self, transport)
        self.made.set_result(transport)

    def data_received(self, data):
        assert isinstance(data, bytes), type(data)
        assert data, "data_received called with empty data"
        self.events.append("data")
        self.data += data
        self._check_waiters()

    def eof_received(self):
        self.events.append("eof")
        self.eof.set_result(None)
        self._check_waiters()
        return self.eof_keep_open

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost.set_result(exc)
        self._check_waiters()

    def pause_writing(self):
        self.events.append("pause")
        if not self.paused.done():
            self.paused.set_result(None)

    def resume_writing(self):
        self.events.append("resume")
        if not self.resumed.done():
            self.resumed.set_result(None)

    # -- helpers
    def _check_waiters(self):
        for n, fut in list(self.data_waiters):
            if fut.done():
                self.data_waiters.remove((n, fut))
            elif len(self.data) >= n:
                fut.set_result(bytes(self.data))
                self.data_waiters.remove((n, fut))
            elif self.lost.done() or self.eof.done():
                fut.set_exception(AssertionError(
                    f"stream ended after {len(self.data)} of {n} bytes"))
                self.data_waiters.remove((n, fut))

    def wait_data(self, n):
        """Future resolved when at least ``n`` bytes have been received."""
        fut = self.loop.create_future()
        self.data_waiters.append((n, fut))
        self._check_waiters()
        return fut

    def collapsed(self):
        """Event names with consecutive duplicates (data, data) merged."""
        out = []
        for e in self.events:
            if not out or out[-1] != e or e not in ("data",):
                out.append(e)
        return out


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        # Returning falsy: the transport closes itself after EOF.
        return False


def echo_factory_failing_first(exc_type, message):
    """A protocol factory that raises exc_type(message) on its first call
    and makes an EchoProtocol on every later one (a server must survive the
    first). The exception is made when raised: one kept by the factory would
    keep its traceback, and the dropped connection's socket, alive."""
    calls = []

    def factory():
        calls.append(1)
        if len(calls) == 1:
            raise exc_type(message)
        return EchoProtocol()
    return factory
