"""Helpers shared by the behaviour tests (imported by conftest and tests)."""

import asyncio
import atexit
import hashlib
import os
import shutil
import socket
import subprocess
import tempfile

BACKENDS = ["asyncio", "epoll", "uring"]


def stock_asyncio_differs(request, reason, since=None, before=None,
                          when=None):
    """Mark the running test as expected to fail on stock asyncio on the
    Pythons where CPython behaves otherwise than the test checks: from
    `since` on (CPython changed it; fastsock keeps it), `before` a version
    (CPython had a bug, fixed then; fastsock follows the fix), both (a
    regression in a range of releases), on every version when neither is
    given (fastsock keeps what asyncio loses), or as `when` says (a fix
    read off the installed asyncio itself).
    `reason` names the change. Strict: once the reference agrees, the mark
    must go."""
    import pytest
    import sys
    if request.node.callspec.params.get("loop") != "asyncio":
        return
    if when is None:
        when = ((since is None or sys.version_info >= since)
                and (before is None or sys.version_info < before))
    if when:
        request.node.add_marker(pytest.mark.xfail(reason=reason, strict=True))


def asyncio_source_has(func, text):
    """Whether the installed asyncio's `func` contains `text`: tells a
    CPython bug still present from one fixed in a later patch release."""
    import inspect
    return text in inspect.getsource(func)


def run_coro(loop, coro, timeout=10.0):
    """Run ``coro`` on ``loop`` and fail with TimeoutError after ``timeout``."""
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def payload(size, seed=0):
    """Deterministic, non-repeating-looking bytes of ``size``."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(b"%d:%d" % (seed, counter)).digest() * 64
        counter += 1
    return bytes(out[:size])


def sha(data):
    return hashlib.sha256(data).hexdigest()


def has_ipv6():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


HAS_IPV6 = has_ipv6()


def abstract_name(tag="t"):
    return "\0fastsock-test-%s-%d-%s" % (tag, os.getpid(), os.urandom(6).hex())


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


# ---------------------------------------------------------------------------
# TLS material, generated at test time
# ---------------------------------------------------------------------------

_CERT_CACHE = {}


def make_self_signed_cert(hostname="localhost"):
    """Return (certfile, keyfile) paths for a self-signed certificate valid
    for ``hostname``, 127.0.0.1 and ::1.  Raises RuntimeError if neither the
    ``cryptography`` package nor the ``openssl`` CLI can make one."""
    if hostname in _CERT_CACHE:
        return _CERT_CACHE[hostname]
    d = tempfile.mkdtemp(prefix="fastsock-tls-")
    atexit.register(shutil.rmtree, d, True)
    certfile = os.path.join(d, "cert.pem")
    keyfile = os.path.join(d, "key.pem")
    try:
        _make_cert_cryptography(hostname, certfile, keyfile)
    except ImportError:
        _make_cert_openssl(hostname, certfile, keyfile)
    _CERT_CACHE[hostname] = (certfile, keyfile)
    return certfile, keyfile


def _make_cert_cryptography(hostname, certfile, keyfile):
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName(hostname),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None),
                       critical=True)
        .sign(key, hashes.SHA256())
    )
    with open(certfile, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(keyfile, "wb") as f:
        f.write(key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))


def _make_cert_openssl(hostname, certfile, keyfile):
    try:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec",
             "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", keyfile, "-out", certfile, "-days", "30",
             "-subj", f"/CN={hostname}",
             "-addext",
             f"subjectAltName=DNS:{hostname},IP:127.0.0.1,IP:::1"],
            check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RuntimeError(
            f"cannot generate a certificate: no 'cryptography' package and "
            f"the openssl CLI failed: {exc!r}") from exc


# ---------------------------------------------------------------------------
# A connected stream pair (server + client) over TCP or a Unix socket
# ---------------------------------------------------------------------------

STREAM_KINDS = ["tcp", "unix"]


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
