"""The HTTP applications `fastsock bench --workloads http` (and the server
tests) run: the same two routes as an aiohttp application and as a plain
ASGI application.

    GET /       "Hello, World!" (text/plain): what wrk asks for
    GET /info   JSON: the worker's pid and the running loop's class and
                backend, so a caller can see who answered and on what loop
    GET /sleep?ms=N   /info's answer after N milliseconds (a request in
                flight, for graceful-shutdown tests)

Serving one of them on one model, as `fastsock bench` does:

    python -m fastsock.bench.httpapp aiohttp|asgi MODEL --addr tcp:127.0.0.1:0 \\
        [--certfile F --keyfile F]

MODEL is asyncio, uvloop, epoll or uring.  The aiohttp app runs on that
model's loop (web.AppRunner + SockSite); the ASGI app runs under uvicorn with
httptools and `loop=` set the way a user would: "asyncio", "uvloop" or
"fastsock:new_<backend>_loop".  Prints "READY tcp:HOST:PORT" once listening,
or "SKIP <reason>" (exit status 3) when the model cannot run here.

With --workers N (N > 1) the process becomes gunicorn (exec) serving the
same listening socket (--bind fd://) with N workers of the model's worker
class: fastsock.workers.AiohttpWorker / UvicornWorker (FASTSOCK_BACKEND set
to the model) for epoll and uring, aiohttp's GunicornWebWorker /
GunicornUVLoopWebWorker, and uvicorn-worker's UvicornWorker with
loop="asyncio" / "uvloop" (httptools) for the others.
"""
import argparse
import asyncio
import json
import os
import socket
import sys

HELLO = b"Hello, World!"


def loop_info():
    loop = asyncio.get_running_loop()
    cls = type(loop)
    return {"pid": os.getpid(), "loop": f"{cls.__module__}.{cls.__qualname__}",
            "backend": getattr(loop, "backend", None)}


# ---- ASGI ------------------------------------------------------------------

async def asgi_app(scope, receive, send):
    """A plain ASGI 3 application (no framework: the server and the loop are
    what is measured)."""
    kind = scope["type"]
    if kind == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if kind != "http":
        return
    path = scope["path"]
    if path == "/sleep":
        query = dict(kv.split("=", 1) for kv in
                     scope["query_string"].decode().split("&") if "=" in kv)
        await asyncio.sleep(int(query.get("ms", "0")) / 1000)
        path = "/info"
    if path == "/info":
        body, ctype = json.dumps(loop_info()).encode(), b"application/json"
    else:
        body, ctype = HELLO, b"text/plain"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", ctype),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# ---- aiohttp ---------------------------------------------------------------

def aiohttp_app():
    """The aiohttp application."""
    from aiohttp import web

    async def hello(request):
        return web.Response(body=HELLO, content_type="text/plain")

    async def info(request):
        return web.json_response(loop_info())

    async def sleep(request):
        await asyncio.sleep(int(request.query.get("ms", "0")) / 1000)
        return web.json_response(loop_info())

    app = web.Application()
    app.router.add_get("/", hello)
    app.router.add_get("/info", info)
    app.router.add_get("/sleep", sleep)
    return app


async def aiohttp_factory():
    """The aiohttp application as gunicorn's aiohttp workers take it:
    `gunicorn fastsock.bench.httpapp:aiohttp_factory -k ...`."""
    return aiohttp_app()


# ---- serving one model (for `fastsock bench`) ------------------------------

class Skip(Exception):
    pass


UVICORN_LOOPS = {"asyncio": "asyncio", "uvloop": "uvloop",
                 "epoll": "fastsock:new_epoll_loop",
                 "uring": "fastsock:new_uring_loop"}


def _check_model(model):
    if model == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError as exc:
            raise Skip(f"uvloop is not installed ({exc})") from None
    elif model in ("epoll", "uring"):
        try:
            import fastsock
            info = fastsock.backends()[model]
        except Exception as exc:
            raise Skip(f"fastsock is not importable: {exc}") from None
        if not info.available:
            raise Skip(f"fastsock backend {model!r} unavailable: {info.reason}")
    elif model != "asyncio":
        raise Skip(f"unknown model {model!r}")


def _new_loop(model):
    if model == "asyncio":
        return asyncio.SelectorEventLoop()
    if model == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    import fastsock
    return fastsock.new_event_loop(model)


def _listen(addr):
    if not addr.startswith("tcp:"):
        raise Skip(f"the http workload runs over TCP only, not {addr!r}")
    host, _, port = addr[4:].rpartition(":")
    # proto=IPPROTO_TCP, as create_server(host, port) makes it: asyncio's
    # transports (and so fastsock's) set TCP_NODELAY only on sockets whose
    # proto says TCP; with proto 0, httptools' two writes per response (head,
    # body) meet Nagle and the client's delayed ACK: 40 ms per request.
    # uvloop sets it whatever the proto.  NODELAY on the listener as well
    # (inherited by accepted sockets), as gunicorn does on its own sockets.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, int(port)))
    sock.listen(4096)
    sock.setblocking(False)
    host, port = sock.getsockname()
    return sock, f"tcp:{host}:{port}"


def _ssl_context(certfile, keyfile):
    if not certfile:
        return None
    import ssl
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


def serve_aiohttp(model, sock, shown, certfile, keyfile):
    from aiohttp import web
    loop = _new_loop(model)
    asyncio.set_event_loop(loop)
    runner = web.AppRunner(aiohttp_app(), access_log=None)

    async def start():
        await runner.setup()
        site = web.SockSite(runner, sock,
                            ssl_context=_ssl_context(certfile, keyfile))
        await site.start()

    loop.run_until_complete(start())
    print(f"READY {shown}", flush=True)
    try:
        loop.run_forever()               # ends with SIGTERM
    finally:
        loop.run_until_complete(runner.cleanup())
        loop.close()


def serve_asgi(model, sock, shown, certfile, keyfile):
    import uvicorn
    config = uvicorn.Config(
        "fastsock.bench.httpapp:asgi_app", loop=UVICORN_LOOPS[model],
        http="httptools", lifespan="off", access_log=False,
        log_level="warning", ssl_certfile=certfile, ssl_keyfile=keyfile)
    server = uvicorn.Server(config)
    # The socket listens already: connections wait in its backlog until
    # uvicorn serves it a moment later.
    print(f"READY {shown}", flush=True)
    server.run(sockets=[sock])


# ---- gunicorn workers ----------------------------------------------------------

GUNICORN_WORKERS = {
    "aiohttp": {"asyncio": "aiohttp.GunicornWebWorker",
                "uvloop": "aiohttp.GunicornUVLoopWebWorker",
                "epoll": "fastsock.workers.AiohttpWorker",
                "uring": "fastsock.workers.AiohttpWorker"},
    "asgi": {"asyncio": "fastsock.bench.httpapp.UvicornAsyncioWorker",
             "uvloop": "fastsock.bench.httpapp.UvicornUvloopWorker",
             "epoll": "fastsock.workers.UvicornWorker",
             "uring": "fastsock.workers.UvicornWorker"},
}
GUNICORN_APPS = {"aiohttp": "fastsock.bench.httpapp:aiohttp_factory",
                 "asgi": "fastsock.bench.httpapp:asgi_app"}


def __getattr__(name):
    # uvicorn-worker's UvicornWorker with the loop named, httptools: what
    # the asyncio and uvloop models run under gunicorn.
    loops = {"UvicornAsyncioWorker": "asyncio", "UvicornUvloopWorker": "uvloop"}
    if name not in loops:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from uvicorn_worker import UvicornWorker
    cls = type(name, (UvicornWorker,), {
        "CONFIG_KWARGS": {**UvicornWorker.CONFIG_KWARGS,
                          "loop": loops[name], "http": "httptools"}})
    cls.__module__ = __name__
    globals()[name] = cls
    return cls


def exec_gunicorn(app, model, sock, shown, workers, certfile, keyfile):
    from gunicorn.config import KNOWN_SETTINGS
    fd = sock.fileno()
    os.set_inheritable(fd, True)
    sock.setblocking(True)
    cmd = [sys.executable, "-m", "gunicorn", GUNICORN_APPS[app],
           "--worker-class", GUNICORN_WORKERS[app][model],
           "--workers", str(workers), "--bind", f"fd://{fd}",
           "--log-level", "warning", "--graceful-timeout", "3"]
    if certfile:
        cmd += ["--certfile", certfile, "--keyfile", keyfile]
    if any("--no-control-socket" in (s.cli or ()) for s in KNOWN_SETTINGS):
        cmd.append("--no-control-socket")
    env = dict(os.environ)
    if model in ("epoll", "uring"):
        env["FASTSOCK_BACKEND"] = model
    print(f"READY {shown}", flush=True)
    os.execve(sys.executable, cmd, env)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("app", choices=("aiohttp", "asgi"))
    p.add_argument("model")
    p.add_argument("--addr", default="tcp:127.0.0.1:0")
    p.add_argument("--certfile")
    p.add_argument("--keyfile")
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)
    try:
        _check_model(args.model)
        if args.app == "aiohttp":
            import aiohttp  # noqa: F401
        else:
            import httptools  # noqa: F401
            import uvicorn  # noqa: F401
        if args.workers > 1:
            import gunicorn  # noqa: F401
            if args.app == "asgi":
                import uvicorn_worker  # noqa: F401
    except Skip as exc:
        print(f"SKIP {exc}", flush=True)
        return 3
    except ImportError as exc:
        print(f"SKIP {exc} (pip install 'fastsock[bench]')", flush=True)
        return 3
    try:
        sock, shown = _listen(args.addr)
    except (Skip, OSError) as exc:
        print(f"SKIP cannot listen on {args.addr}: {exc}", flush=True)
        return 3
    if args.workers > 1:
        exec_gunicorn(args.app, args.model, sock, shown, args.workers,
                      args.certfile, args.keyfile)
    serve = serve_aiohttp if args.app == "aiohttp" else serve_asgi
    serve(args.model, sock, shown, args.certfile, args.keyfile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
