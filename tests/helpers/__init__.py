"""Code shared by the behaviour tests, one module per concern.

    loops      the loops under test (BACKENDS), run_coro, and marks for where
               stock asyncio behaves otherwise than a test checks
    data       deterministic payloads and their digests
    addresses  IPv6 availability, abstract Unix socket names
    protocols  RecordingProtocol and EchoProtocol
    streams    StreamPair (a server and one connected client over TCP or a
               Unix socket) and sockets with small kernel buffers
    certs      a TLS certificate and key for localhost

Import each name from the module that holds it.
"""
