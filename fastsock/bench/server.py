"""The Python server every Python model runs: one process per model.

    python server.py MODEL --addr tcp:127.0.0.1:0|unix:PATH|unix:@NAME|udp:HOST:PORT
                     [--file F]

MODEL is epoll, uring (fastsock backends), asyncio (stock selector loop) or
uvloop.  The protocol is the same for all of them; only the loop differs.
Without --file it echoes (udp: each datagram back to its sender); with
--file it sends the file to each connection with loop.sendfile() and closes.

It is started as a script path, not with -m: the asyncio and uvloop models
must work even when the fastsock package itself does not import (not built).

Prints one line on stdout: "READY <address>[ | note]" once listening, or
"SKIP <reason>" (exit status 3) when the model cannot run here.
"""
import argparse
import asyncio
import sys

# A sibling module, not fastsock.bench.netcommon: see the docstring above.
from netcommon import format_addr, parse_addr, raise_nofile

CHUNK = 256 * 1024


class EchoProtocol(asyncio.Protocol):
    """Write back what arrives.  When the peer stops reading, stop reading
    from it too, so the write buffer cannot grow without bound."""

    __slots__ = ("transport",)

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def pause_writing(self):
        self.transport.pause_reading()

    def resume_writing(self):
        self.transport.resume_reading()

    def connection_lost(self, exc):
        self.transport = None


class EchoDatagramProtocol(asyncio.DatagramProtocol):
    """Send each datagram back to where it came from."""

    __slots__ = ("transport",)

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


class SendfileProtocol(asyncio.Protocol):
    """Send the whole file, then close.  Uses loop.sendfile(); when the loop
    does not implement it (uvloop), falls back to what a user would write:
    read chunks and write them, waiting on flow control."""

    def __init__(self, path, native):
        self.path = path
        self.native = native
        self.can_write = None

    def connection_made(self, transport):
        self.transport = transport
        self.can_write = asyncio.Event()
        self.can_write.set()
        asyncio.get_running_loop().create_task(self.send())

    def pause_writing(self):
        self.can_write.clear()

    def resume_writing(self):
        self.can_write.set()

    def connection_lost(self, exc):
        self.can_write.set()

    async def send(self):
        loop = asyncio.get_running_loop()
        # One file object per connection: loop.sendfile() and the fallback
        # both move the file position, so sharing one would mix offsets.
        try:
            with open(self.path, "rb") as f:
                if self.native:
                    await loop.sendfile(self.transport, f)
                else:
                    while True:
                        chunk = f.read(CHUNK)
                        if not chunk:
                            break
                        await self.can_write.wait()
                        if self.transport.is_closing():
                            return
                        self.transport.write(chunk)
        except (ConnectionError, OSError):
            pass
        finally:
            self.transport.close()


class Skip(Exception):
    pass


def make_loop(model):
    if model == "asyncio":
        return asyncio.SelectorEventLoop()       # epoll selector on Linux
    if model == "uvloop":
        try:
            import uvloop
        except ImportError as exc:
            raise Skip(f"uvloop is not installed ({exc})") from None
        return uvloop.new_event_loop()
    if model in ("epoll", "uring"):
        try:
            import fastsock
            new_event_loop = fastsock.new_event_loop
        except (ImportError, AttributeError) as exc:
            raise Skip(f"fastsock.new_event_loop is not importable: {exc}") from None
        backends = getattr(fastsock, "backends", None)
        if backends is not None:
            info = backends().get(model)
            if info is not None and not info.available:
                raise Skip(f"fastsock backend {model!r} unavailable: {info.reason}")
        try:
            loop = new_event_loop(backend=model)
        except Exception as exc:                 # any failure: say why, skip
            raise Skip(f"fastsock.new_event_loop(backend={model!r}) failed: "
                       f"{type(exc).__name__}: {exc}") from None
        got = getattr(loop, "backend", model)
        if got != model:
            loop.close()
            raise Skip(f"asked for backend {model!r}, got {got!r}")
        return loop
    raise Skip(f"unknown model {model!r}")


async def serve(loop, addr, factory):
    try:
        kind, where = parse_addr(addr)
    except ValueError as exc:
        raise Skip(str(exc)) from None
    if kind == "unix":
        server = await loop.create_unix_server(factory, where, backlog=4096)
        return server, addr
    if kind == "udp":
        transport, _ = await loop.create_datagram_endpoint(
            EchoDatagramProtocol, local_addr=where)
        return transport, format_addr(kind, transport.get_extra_info("sockname"))
    server = await loop.create_server(factory, *where, backlog=4096)
    return server, format_addr(kind, server.sockets[0].getsockname())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--addr", required=True)
    p.add_argument("--file")
    args = p.parse_args(argv)
    raise_nofile()
    try:
        loop = make_loop(args.model)
    except Skip as exc:
        print(f"SKIP {exc}", flush=True)
        return 3
    asyncio.set_event_loop(loop)
    note = ""
    if args.file:
        # AbstractEventLoop.sendfile only raises NotImplementedError.
        native = type(loop).sendfile is not asyncio.AbstractEventLoop.sendfile
        if not native:
            note = "loop.sendfile() not implemented; server used read()+write()"
        factory = lambda: SendfileProtocol(args.file, native)  # noqa: E731
    else:
        factory = EchoProtocol
    try:
        server, shown = loop.run_until_complete(serve(loop, args.addr, factory))
    except Skip as exc:
        print(f"SKIP {exc}", flush=True)
        return 3
    except Exception as exc:
        print(f"SKIP cannot listen on {args.addr}: {type(exc).__name__}: {exc}",
              flush=True)
        return 3
    print(f"READY {shown}" + (f" | {note}" if note else ""), flush=True)
    try:
        loop.run_forever()                       # ends with SIGTERM
    finally:
        server.close()
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
