"""`fastsock bench`: readiness (epoll) vs completion (io_uring) on this host.

The same echo protocol runs on fastsock's two backends, stock asyncio and
uvloop; plain C echo servers (shipped as sources in csrc/, compiled at first
use) give the limit.  A native load generator (csrc/loadgen.c) drives them
all, pinned to a different CPU than the server.

Modules:
    native   compile and cache the C programs
    server   the Python echo / sendfile server, run as a subprocess per model
    models   which models exist, why one is skipped, starting their servers
    runner   workloads, rounds, interleaving, medians
    report   table, verdict, JSON, plot
    cli      `fastsock bench` arguments
    info     `fastsock info`
"""
