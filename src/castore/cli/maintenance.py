"""The operator's subcommands: ``retain``, ``gc``, ``verify`` and ``diff``.

As in ``commands``, castore.api (and torch with it) is imported inside each function, so
registering these commands costs ``castore --help`` nothing. ``retain`` and ``gc`` take
``--dry-run``; ``verify`` exits 1 when anything is wrong and not repaired.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from castore.cli.argtypes import int_at_least
from castore.cli.commands import open_store
from castore.cli.render import format_fields, format_table, format_value, human_bytes, to_json

if TYPE_CHECKING:
    from castore.maintenance.gc import GcReport
    from castore.maintenance.repair import RepairReport
    from castore.maintenance.verify import VerifyReport

__all__ = ["add_commands", "cmd_diff", "cmd_gc", "cmd_retain", "cmd_verify", "parse_duration"]

_UNITS_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?)([smhd]?)")


def add_commands(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Register the subcommands on ``sub`` (argparse subparsers), sharing ``parents``."""
    retain = sub.add_parser(
        "retain", parents=parents, help="forget all but the last N and best K checkpoints"
    )
    retain.add_argument("run", metavar="RUN", help="run name")
    retain.add_argument(
        "--keep-last", metavar="N", type=int_at_least(0), default=0, help="default 0"
    )
    retain.add_argument(
        "--keep-best", metavar="K", type=int_at_least(0), default=0, help="default 0"
    )
    retain.add_argument(
        "--metric", default="score", help="rank for --keep-best (default score; =-loss: lowest)"
    )
    retain.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    retain.set_defaults(func=cmd_retain)

    gc = sub.add_parser("gc", parents=parents, help="delete unreferenced blobs (two passes)")
    gc.add_argument(
        "--grace", type=parse_duration, default=3600.0, help="e.g. 90s, 30m, 1h (default), 2d"
    )
    gc.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    gc.set_defaults(func=cmd_gc)

    verify = sub.add_parser(
        "verify", parents=parents, help="re-read and re-hash every referenced blob"
    )
    verify.add_argument("run", metavar="RUN", nargs="?", help="only this run's checkpoints")
    verify.add_argument(
        "--repair-from",
        metavar="OTHER",
        help="restore missing or corrupt blobs from a replica store or a cache directory",
    )
    verify.set_defaults(func=cmd_verify)

    diff = sub.add_parser("diff", parents=parents, help="tensors changed between checkpoints")
    diff.add_argument("a", metavar="RUN@A", type=_checkpoint, help="e.g. ppo@10")
    diff.add_argument("b", metavar="RUN@B", type=_checkpoint, help="e.g. ppo@20")
    diff.set_defaults(func=cmd_diff)


def cmd_retain(args: argparse.Namespace) -> int:
    """Apply (or with --dry-run, show) a retention policy to one run."""
    store = open_store(args)
    plan = store.run(args.run).retain(
        keep_last=args.keep_last,
        keep_best=args.keep_best,
        metric=args.metric,
        dry_run=args.dry_run,
    )
    rows = [
        {"epoch": d.epoch, "value": d.value, "keep": d.keep, "reasons": list(d.reasons)}
        for d in plan.decisions
    ]
    if args.json:
        print(to_json({**asdict(plan), "decisions": rows, "dry_run": args.dry_run}))
        return 0
    metric = plan.metric.removeprefix("-") if plan.metric else None
    columns = [("epoch", "epoch"), *([("value", metric)] if metric else [])]
    columns += [("action", "action"), ("why", "why")]
    table = [
        {**row, "action": "keep" if row["keep"] else "forget", "why": "; ".join(row["reasons"])}
        for row in rows
    ]
    forgotten = ", ".join(map(str, plan.forgotten)) or "none"
    verb = "would forget" if args.dry_run else "forgot"
    print(format_table(table, columns) if table else "no checkpoints")
    counted = _plural(len(rows), "checkpoint")
    print(f"\n{verb} {len(plan.forgotten)} of {counted} (epochs: {forgotten})")
    if plan.forgotten and not args.dry_run:
        print("their blobs are freed by 'castore gc' once no checkpoint references them")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    """One garbage collection pass (or with --dry-run, what it would do)."""
    report = open_store(args).gc(grace_s=args.grace, dry_run=args.dry_run)
    if args.json:
        print(to_json(asdict(report)))
    else:
        print(format_fields(_gc_lines(report)))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Check every referenced blob; report (and optionally repair) what is wrong."""
    store = open_store(args)
    report = store.verify(args.run)
    repair = None
    if args.repair_from is not None and report.problems:
        repair = store.repair(report, args.repair_from, **args.storage_options)
    if args.json:
        print(to_json(_verify_json(report, repair, args.repair_from)))
    else:
        print(_verify_text(report, repair, args.repair_from))
    unrepaired = report.problems and (repair is None or not repair.ok)
    return 1 if unrepaired or report.part_problems else 0


def cmd_diff(args: argparse.Namespace) -> int:
    """What changed between two checkpoints, by tensor."""
    diff = open_store(args).diff(*args.a, *args.b)
    rows = [
        {
            "name": c.name,
            "dtype": c.dtype if c.dtype == c.old_dtype else f"{c.old_dtype}->{c.dtype}",
            "shape": _shape(c.shape)
            if c.shape == c.old_shape
            else f"{_shape(c.old_shape)}->{_shape(c.shape)}",
            "bytes": c.nbytes,
            "max_abs_diff": c.max_abs_diff,
        }
        for c in diff.changed
    ]
    if args.json:
        print(to_json(asdict(diff)))
        return 0
    lines = [
        ("a", f"{diff.a[0]}@{diff.a[1]}"),
        ("b", f"{diff.b[0]}@{diff.b[1]}"),
        ("added", _count_text(diff.added, diff.added_bytes)),
        ("removed", _count_text(diff.removed, diff.removed_bytes)),
        ("changed", _count_text(diff.changed, diff.changed_bytes)),
        ("unchanged", _plural(diff.n_unchanged, "tensor")),
    ]
    text = [format_fields(lines)]
    if rows:
        columns = [(k, k) for k in ("name", "dtype", "shape", "bytes", "max_abs_diff")]
        text += ["", format_table(rows, columns)]
    text += [
        f"{label} {name}"
        for label, names in (("+", diff.added), ("-", diff.removed))
        for name in names
    ]
    print("\n".join(text))
    return 0


def parse_duration(text: str) -> float:
    """``"90"`` or ``"90s"``, ``"30m"``, ``"1h"``, ``"2d"`` -> seconds."""
    match = _DURATION_RE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"expected a duration like 90s, 30m, 1h, 2d; got {text!r}")
    return float(match.group(1)) * _UNITS_S[match.group(2)]


def _gc_lines(report: GcReport) -> list[tuple[str, str]]:
    grace = _duration_text(report.grace_s)
    dry = report.dry_run
    lines = [
        (
            "blobs",
            f"{report.n_blobs} in the store, {report.n_referenced} referenced by "
            f"{_plural(report.n_checkpoints, 'checkpoint')} in {_plural(report.n_runs, 'run')}",
        ),
        (
            "would delete" if dry else "deleted",
            f"{_plural(report.deleted_blobs, 'blob')} ({human_bytes(report.deleted_bytes)}) "
            f"recorded at least {grace} ago, still unreferenced",
        ),
        (
            "would record" if dry else "recorded",
            f"{_plural(report.pending_blobs, 'blob')} ({human_bytes(report.pending_bytes)}) "
            f"unreferenced for {grace} or more; a gc {grace} or more from now deletes them",
        ),
        ("kept", f"{_plural(report.kept, 'recorded blob')}, referenced or rewritten since"),
        ("waiting", f"{_plural(report.waiting, 'recorded blob')}, recorded less than {grace} ago"),
        (
            "temporaries",
            f"{report.deleted_temporaries} {'to delete' if dry else 'deleted'}, "
            f"{report.pending_temporaries} {'to record' if dry else 'recorded'}",
        ),
    ]
    if report.restored:
        lines.append(
            ("restored", f"{_plural(report.restored, 'blob')} a save rewrote during the sweep")
        )
    return lines


def _verify_text(report: VerifyReport, repair: RepairReport | None, source: str | None) -> str:
    scope = f"run '{report.run}'" if report.run else "the store"
    head = (
        f"checked {_plural(report.n_blobs, 'blob')} ({human_bytes(report.n_bytes)} decoded) "
        f"of {_plural(report.n_checkpoints, 'checkpoint')} of {scope}"
    )
    if report.ok:
        return f"{head}: no problems"
    text = [f"{head}: {_plural(len(report.problems), 'blob')} missing or corrupt", ""]
    if report.problems:
        problems = [
            {"blob": p.digest[:12] + "…", "problem": p.kind, "detail": p.message}
            for p in report.problems
        ]
        text += [
            format_table(
                problems, [("blob", "blob"), ("problem", "problem"), ("detail", "detail")]
            ),
            "",
        ]
        affected = [
            {"run": run, "epoch": epoch, "tensors": ", ".join(tensors)}
            for (run, epoch), tensors in report.affected().items()
        ]
        text += [
            format_table(affected, [("run", "run"), ("epoch", "epoch"), ("tensors", "tensors")])
        ]
    for part in report.part_problems:
        text.append(f"unreadable part: run {part.run} epoch {part.epoch}: {part.message}")
    if repair is not None:
        text.append(f"\nrepaired {_plural(len(repair.repaired), 'blob')} from {source}")
        text += [f"could not repair {digest[:12]}…: {why}" for digest, why in repair.failed]
    return "\n".join(text)


def _verify_json(
    report: VerifyReport, repair: RepairReport | None, source: str | None
) -> dict[str, object]:
    found: dict[str, object] = {
        "ok": report.ok,
        "run": report.run,
        "checkpoints": report.n_checkpoints,
        "blobs": report.n_blobs,
        "decoded_bytes": report.n_bytes,
        "problems": [
            {
                "digest": p.digest,
                "kind": p.kind,
                "message": p.message,
                "uses": [asdict(use) for use in p.target.uses],
            }
            for p in report.problems
        ],
        "part_problems": [asdict(part) for part in report.part_problems],
        "affected": [
            {"run": run, "epoch": epoch, "tensors": tensors}
            for (run, epoch), tensors in report.affected().items()
        ],
    }
    if repair is not None:
        found["repair"] = {
            "source": source,
            "repaired": list(repair.repaired),
            "failed": [{"digest": d, "reason": why} for d, why in repair.failed],
        }
    return found


def _checkpoint(text: str) -> tuple[str, int]:
    run, sep, epoch = text.rpartition("@")
    if not sep or not run or not epoch.isdigit():
        raise argparse.ArgumentTypeError(f"expected RUN@EPOCH, e.g. ppo@10; got {text!r}")
    return run, int(epoch)


def _count_text(items: tuple[object, ...], nbytes: int) -> str:
    counted = _plural(len(items), "tensor")
    return f"{counted}, {human_bytes(nbytes)}" if items else counted


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _shape(shape: tuple[int, ...]) -> str:
    return format_value("shape", list(shape))


def _duration_text(seconds: float) -> str:
    for unit in ("d", "h", "m"):
        if seconds >= _UNITS_S[unit] and seconds % _UNITS_S[unit] == 0:
            return f"{seconds / _UNITS_S[unit]:g}{unit}"
    return f"{seconds:g}s"
