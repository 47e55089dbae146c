"""Command line: `fastsock bench` and `fastsock info` (also python -m fastsock)."""
import argparse
import sys


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="fastsock",
        description="fastsock: epoll and io_uring asyncio event loops")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    b = sub.add_parser("bench", help="compare epoll, io_uring, asyncio, uvloop "
                       "and plain C servers on this host")
    from fastsock.bench import cli
    cli.add_arguments(b)
    i = sub.add_parser("info", help="kernel, io_uring support, liburing version")
    i.add_argument("--json", action="store_true", help="print JSON")
    args = p.parse_args(argv)
    if args.command == "bench":
        return cli.run(args)
    if args.command == "info":
        from fastsock.bench import info
        info.show(info.gather(), as_json=args.json)
        return 0
    p.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
