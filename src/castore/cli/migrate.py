"""``castore import`` and ``castore export``: move checkpoints in from ``.pt`` directories
and out to plain ``.pt``/``.safetensors`` files.

As elsewhere in the CLI, castore.api (and torch) is imported inside each function.
``import`` prints one line per file (imported, skipped and why) and exits 1 when a
checkpoint file was skipped for a reason other than being imported already.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import asdict
from typing import Any

from castore.cli.commands import existing_run, open_store
from castore.cli.render import format_table, human_bytes, to_json

__all__ = ["add_commands", "cmd_export", "cmd_import", "parse_target"]

_TARGET_RE = re.compile(r"(?P<run>[^@]+)(?:@(?P<epoch>\d+))?")


def add_commands(
    sub: Any, *, flags: argparse.ArgumentParser, reading: argparse.ArgumentParser
) -> None:
    """Register the subcommands on ``sub`` (argparse subparsers)."""
    imp = sub.add_parser(
        "import",
        parents=[flags],
        help="import .pt/.pth/.safetensors files and YAML/JSON sidecars into a run",
        description="Import checkpoint files (or directories, searched recursively) into a "
        "run. Epochs come from a sidecar's 'epoch' or the digits ending the file name "
        "(model_0010.pt); numeric sidecar entries become metrics; trainer_state.pt becomes "
        "the run's trainer state. Epochs already in the run are skipped.",
    )
    imp.add_argument("sources", metavar="SRC", nargs="+", help="a directory or checkpoint files")
    imp.add_argument("store", metavar="STORE", help="store URL: a path, s3://..., gs://...")
    imp.add_argument("--run", required=True, help="the run to import into")
    imp.add_argument("--dry-run", action="store_true", help="read and check, write nothing")
    imp.add_argument(
        "--trust",
        action="store_true",
        help="read .pt files with full unpickling (whole modules); only for files you trust",
    )
    imp.set_defaults(func=cmd_import)

    exp = sub.add_parser(
        "export",
        parents=[reading],
        help="write one checkpoint to a .pt or .safetensors file with a .json sidecar",
    )
    exp.add_argument(
        "target", metavar="RUN[@EPOCH]", type=parse_target, help="default epoch: latest"
    )
    exp.add_argument("out", metavar="OUT", help="OUT.pt (torch.load) or OUT.safetensors")
    exp.add_argument(
        "--keys", metavar="PATTERN", action="append", help="glob over tensor names, repeatable"
    )
    exp.add_argument("--force", action="store_true", help="replace OUT and its sidecar")
    exp.set_defaults(func=cmd_export)


def parse_target(text: str) -> tuple[str, int | None]:
    """``RUN`` or ``RUN@EPOCH``."""
    match = _TARGET_RE.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"expected RUN or RUN@EPOCH, got {text!r}")
    epoch = match.group("epoch")
    return match.group("run"), int(epoch) if epoch is not None else None


def cmd_import(args: argparse.Namespace) -> int:
    """Import files into a run and print what happened to each."""
    from castore.api.importer import import_checkpoints

    report = import_checkpoints(
        args.sources,
        args.store,
        args.run,
        dry_run=args.dry_run,
        trust=args.trust,
        **args.storage_options,
    )
    failed = [
        item
        for item in report.skipped
        if item.kind != "sidecar" and "already in" not in item.reason
    ]
    rows = [
        {
            "path": item.path,
            "kind": item.kind,
            "epoch": item.epoch,
            "action": item.action,
            "new_bytes": item.new_bytes,
            "reason": item.reason,
        }
        for item in report.items
    ]
    if args.json:
        print(to_json({"run": args.run, "dry_run": args.dry_run, "items": rows}))
        return 1 if failed else 0
    columns = [("path", "file"), ("kind", "kind"), ("epoch", "epoch"), ("action", "action")]
    columns += [("new_bytes", "new"), ("reason", "why")]
    print(format_table(rows, columns) if rows else "no checkpoint files found")
    verb = "would import" if args.dry_run else "imported"
    new = sum(item.new_bytes for item in report.imported)
    print(
        f"\n{verb} {len(report.imported)}, skipped {len(report.skipped)}"
        + ("" if args.dry_run else f"; {human_bytes(new)} new in the store")
    )
    return 1 if failed else 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write one checkpoint to a plain file."""
    from castore.api.export import export_checkpoint

    run_name, epoch = args.target
    run = existing_run(open_store(args), run_name)
    result = export_checkpoint(run, epoch, args.out, keys=args.keys, overwrite=args.force)
    if args.json:
        print(to_json(asdict(result)))
        return 0
    print(
        f"wrote {result.path} ({result.tensors} tensors, {human_bytes(result.nbytes)}) "
        f"and {result.sidecar}"
    )
    return 0
