"""The bench's address grammar and fd limit, as csrc/common.c has them.

    tcp:HOST:PORT   udp:HOST:PORT   (HOST may be [v6]; PORT 0 when listening)
    unix:/path      unix:@abstract-name

Imported by server.py as a sibling module (server.py runs as a script and
must not import the fastsock package), and as fastsock.bench.netcommon by
the rest of the bench.  Standard library only.
"""
import resource


def parse_addr(spec):
    """(kind, address): ("unix", path) with an abstract name starting with
    NUL, or ("tcp" | "udp", (host, port)).  ValueError for anything else."""
    kind, sep, rest = spec.partition(":")
    if sep and kind == "unix" and rest:
        return kind, "\0" + rest[1:] if rest.startswith("@") else rest
    if sep and kind in ("tcp", "udp"):
        host, colon, port = rest.rpartition(":")
        if colon and port.isdigit():
            if host.startswith("[") and host.endswith("]"):
                host = host[1:-1]
            return kind, (host, int(port))
    raise ValueError(f"bad address {spec!r}: expected tcp:HOST:PORT, "
                     "udp:HOST:PORT, unix:PATH or unix:@NAME")


def format_addr(kind, address):
    """The inverse of parse_addr, for a socket's getsockname()."""
    if kind == "unix":
        if isinstance(address, bytes):
            address = address.decode()
        return "unix:@" + address[1:] if address.startswith("\0") else f"unix:{address}"
    return f"{kind}:{address[0]}:{address[1]}"


def raise_nofile():
    """Soft RLIMIT_NOFILE up to the hard limit (idle-memory runs hold
    thousands of connections)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
