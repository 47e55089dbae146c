"""fastsock.sockaddr: Python addresses <-> kernel sockaddr, checked against
what the socket module itself makes of them."""

import socket

import pytest

sockaddr = pytest.importorskip("fastsock.sockaddr")

from helpers.addresses import HAS_IPV6


def _kernel_view(family, type, address):
    """How the kernel spells `address`: bind a socket to it and read it back
    through the socket module."""
    with socket.socket(family, type) as s:
        s.bind(address)
        return s.getsockname()


@pytest.mark.parametrize("address", [("127.0.0.1", 0), ("", 0),
                                     ("localhost", 0)])
def test_inet_round_trip(address):
    raw = sockaddr.to_sockaddr(socket.AF_INET, address)
    host = {"": "0.0.0.0", "localhost": "127.0.0.1"}.get(address[0],
                                                         address[0])
    assert sockaddr.from_sockaddr(raw) == (host, address[1])


def test_inet_port_and_broadcast():
    raw = sockaddr.to_sockaddr(socket.AF_INET, ("<broadcast>", 65535))
    assert sockaddr.from_sockaddr(raw) == ("255.255.255.255", 65535)


@pytest.mark.skipif(not HAS_IPV6, reason="no IPv6")
def test_inet6_round_trip_with_flowinfo_and_scope():
    raw = sockaddr.to_sockaddr(socket.AF_INET6, ("::1", 8080, 5, 0))
    assert sockaddr.from_sockaddr(raw) == ("::1", 8080, 5, 0)
    raw = sockaddr.to_sockaddr(socket.AF_INET6, ("fe80::1%1", 80))
    assert sockaddr.from_sockaddr(raw) == ("fe80::1", 80, 0, 1)
    raw = sockaddr.to_sockaddr(socket.AF_INET6, ("", 1))
    assert sockaddr.from_sockaddr(raw) == ("::", 1, 0, 0)


def test_unix_path_and_abstract(tmp_path):
    path = str(tmp_path / "s")
    assert sockaddr.from_sockaddr(
        sockaddr.to_sockaddr(socket.AF_UNIX, path)) == path
    assert sockaddr.from_sockaddr(
        sockaddr.to_sockaddr(socket.AF_UNIX, path.encode())) == path
    name = b"\0fastsock-abstract"
    raw = sockaddr.to_sockaddr(socket.AF_UNIX, name)
    assert sockaddr.from_sockaddr(raw) == name
    assert _kernel_view(socket.AF_UNIX, socket.SOCK_DGRAM, name) == name


@pytest.mark.parametrize("family,address,exc", [
    (socket.AF_INET, "127.0.0.1", TypeError),
    (socket.AF_INET, ("127.0.0.1",), TypeError),
    (socket.AF_INET, ("127.0.0.1", "80"), TypeError),
    (socket.AF_INET, (1234, 80), TypeError),
    (socket.AF_INET, ("127.0.0.1", 70000), OverflowError),
    (socket.AF_INET, ("no-such-host.invalid", 80), socket.gaierror),
    (socket.AF_INET6, ("::1", 80, 1 << 20), OverflowError),
    (socket.AF_UNIX, 42, TypeError),
    (socket.AF_UNIX, "x" * 200, OSError),
])
def test_bad_addresses_raise_like_the_socket_module(family, address, exc):
    with pytest.raises(exc):
        sockaddr.to_sockaddr(family, address)
    # the socket module agrees on the exception type
    with socket.socket(family, socket.SOCK_DGRAM) as s, pytest.raises(exc):
        s.sendto(b"x", address)


def test_other_families_are_not_spelled():
    assert sockaddr.to_sockaddr(socket.AF_PACKET, ("lo", 0)) is None
