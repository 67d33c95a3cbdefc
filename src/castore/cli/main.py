"""Entry point of the ``castore`` command: the parser and the one top-level error handler.

Building the parser needs no castore layer (commands import them lazily, inside each
function), so ``castore --help`` pays for nothing it does not print. A ``CastoreError``
becomes one line on stderr and exit status 1; usage errors exit 2, as argparse does;
``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from importlib.metadata import PackageNotFoundError, version

from castore.cli import commands, maintenance, migrate
from castore.cli.argtypes import int_at_least, positive_float
from castore.cli.render import format_error
from castore.errors import CastoreError

__all__ = ["build_parser", "main"]

_DEMO_STORE = "./castore-demo"
_DEMO_EPOCHS = 20


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; each subcommand sets ``func`` to its command function."""
    parser = argparse.ArgumentParser(
        prog="castore",
        description="Content-addressed checkpoint store for PyTorch: inspect and maintain stores.",
    )
    parser.add_argument("--version", action="version", version=f"castore {_version()}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    flags = argparse.ArgumentParser(add_help=False, parents=[common])
    flags.add_argument("--json", action="store_true", help="print JSON for scripts")
    flags.add_argument(
        "-o",
        "--storage-option",
        dest="storage_options",
        metavar="KEY=VALUE",
        type=_storage_option,
        action="append",
        default=[],
        help="fsspec storage option, repeatable (value parsed as JSON when it can be)",
    )
    reading = argparse.ArgumentParser(add_help=False, parents=[flags])
    reading.add_argument("store", metavar="STORE", help="store URL: a path, s3://..., gs://...")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    ls = sub.add_parser("ls", parents=[reading], help="list runs, or the checkpoints of RUN")
    ls.add_argument("run", metavar="RUN", nargs="?", help="list this run's checkpoints")
    ls.set_defaults(func=commands.cmd_ls)

    show = sub.add_parser("show", parents=[reading], help="tensors of one checkpoint")
    show.add_argument("run", metavar="RUN", help="run name")
    show.add_argument("epoch", metavar="EPOCH", nargs="?", type=int, help="default: latest")
    show.set_defaults(func=commands.cmd_show)

    best = sub.add_parser("best", parents=[reading], help="top checkpoints of RUN by a metric")
    best.add_argument("run", metavar="RUN", help="run name")
    best.add_argument(
        "--metric", required=True, help="highest first; '--metric=-loss' for lowest first"
    )
    best.add_argument("-n", type=int_at_least(1), default=5, help="how many (default 5)")
    best.set_defaults(func=commands.cmd_best)

    query = sub.add_parser("query", parents=[reading], help="SQL over the view 'checkpoints'")
    query.add_argument("sql", metavar="SQL", help="DuckDB SQL, e.g. 'SELECT * FROM checkpoints'")
    query.set_defaults(func=commands.cmd_query)

    du = sub.add_parser("du", parents=[reading], help="logical vs stored bytes, dedup ratio")
    du.set_defaults(func=commands.cmd_du)

    follow = sub.add_parser(
        "follow",
        parents=[reading],
        help="print each checkpoint of RUN as it is committed (JSON lines with --json)",
    )
    follow.add_argument("run", metavar="RUN", help="run name")
    follow.add_argument(
        "--poll", type=positive_float, default=5.0, help="seconds between listings (default 5)"
    )
    follow.add_argument("--since", type=int, help="skip epochs up to and including this one")
    follow.add_argument(
        "--timeout", type=positive_float, help="stop after this many seconds without news"
    )
    follow.set_defaults(func=commands.cmd_follow)
    maintenance.add_commands(sub, parents=[reading])
    migrate.add_commands(sub, flags=flags, reading=reading)

    demo = sub.add_parser(
        "demo", parents=[common], help="train a small CartPole policy, checkpointing each epoch"
    )
    demo.add_argument(
        "--store", metavar="DIR", default=_DEMO_STORE, help=f"store (default {_DEMO_STORE})"
    )
    demo.add_argument(
        "--epochs",
        metavar="N",
        type=int_at_least(1),
        default=_DEMO_EPOCHS,
        help=f"epochs to train (default {_DEMO_EPOCHS})",
    )
    demo.set_defaults(func=commands.cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``castore`` command line; return its exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if hasattr(args, "storage_options"):
        args.storage_options = dict(args.storage_options)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("castore: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:  # the one top-level handler: no traceback unless --debug
        if args.debug:
            traceback.print_exc()
        message = format_error(exc)
        if not isinstance(exc, CastoreError):
            message = f"unexpected {type(exc).__name__}: {message}; run with --debug for details"
        print(f"castore: error: {message}", file=sys.stderr)
        return 1


def _storage_option(text: str) -> tuple[str, object]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def _version() -> str:
    try:
        return version("castore")
    except PackageNotFoundError:
        return "unknown"
