"""Addresses: whether this host has an IPv6 loopback, and fresh abstract
Unix socket names (nothing to clean up on disk)."""

import os
import socket


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
