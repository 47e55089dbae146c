"""Smoke test of an installed fastsock (a wheel in a fresh environment, as
cibuildwheel's test step and tests/test_wheel.py run it): an echo round trip
over TCP and over a Unix socket on every backend this host offers, then
`fastsock info`.  Prints "ran BACKEND..." last; exits non-zero on failure."""

import asyncio
import os
import sys
import tempfile

import fastsock

assert fastsock.__file__.startswith(sys.prefix), fastsock.__file__

async def echo(reader, writer):
    writer.write(await reader.read(100))
    await writer.drain()
    writer.close()

async def round_trip(server, connect):
    async with server:
        reader, writer = await connect()
        writer.write(b"ping")
        await writer.drain()
        data = await reader.read(100)
        writer.close()
        await writer.wait_closed()
        return data

async def main(expected):
    loop = asyncio.get_running_loop()
    assert loop.backend == expected, loop.backend
    srv = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    assert await round_trip(
        srv, lambda: asyncio.open_connection("127.0.0.1", port)) == b"ping"
    path = os.path.join(tempfile.mkdtemp(), "s")
    srv = await asyncio.start_unix_server(echo, path)
    assert await round_trip(
        srv, lambda: asyncio.open_unix_connection(path)) == b"ping"
    return expected

ran = []
for name, info in fastsock.backends().items():
    if info.available:
        ran.append(fastsock.run(main(name), backend=name))
    else:
        print(f"skipped {name}: {info.reason}")

from fastsock.__main__ import main as cli     # noqa: E402
assert cli(["info"]) == 0
print("ran", " ".join(ran))
