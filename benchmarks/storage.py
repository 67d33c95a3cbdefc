"""What real training runs cost to checkpoint with castore, against torch.save.

    python benchmarks/storage.py [--quick | --smoke] [--dir DIR] [--seed S]

Trains, on the CPU and seeded, a PPO agent on CartPole, a byte-level transformer language
model on the standard library's source, and a fine-tune of that model's last quarter of
blocks. Every checkpoint (model and optimizer state) is saved both into a castore store
and as a torch.save file; the tables give bytes stored and save time per checkpoint and
in total, as castore / torch.save ratios, next to the targets of the incremental
checkpointing issue. The last checkpoint of each run must load back bit for bit.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import torch

import castore
from cases.common import MiB, aligned, human_bytes
from cases.training import RunResult, SideBySide, warm_up
from cases.training_lm import LMConfig, LMTrainer, TinyGPT, read_corpus, trainable_tail
from cases.training_rl import PPO, PPOConfig

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

# The targets: castore's bytes over torch.save's, summed over a run's checkpoints.
TARGET_DENSE = 0.80
TARGET_POLICY = 0.75
TARGET_FINETUNE = 0.40


@dataclass(frozen=True, slots=True)
class Preset:
    """Sizes of one benchmark mode: the three runs' configs and checkpoint counts."""

    rl: PPOConfig
    rl_checkpoints: int
    lm: LMConfig
    lm_checkpoints: int
    finetune_lr: float
    finetune_checkpoints: int
    corpus_bytes: int
    finetune_bytes: int


FULL = Preset(
    rl=PPOConfig(),
    rl_checkpoints=30,
    lm=LMConfig(),
    lm_checkpoints=20,
    finetune_lr=3e-4,
    finetune_checkpoints=20,
    corpus_bytes=2 * MiB,
    finetune_bytes=1 * MiB,
)
PRESETS = {
    "full": FULL,
    # The same models with fewer training steps between 20 checkpoints: the bytes per
    # checkpoint are the full run's, the weights move less between checkpoints.
    "quick": dataclasses.replace(
        FULL,
        rl=dataclasses.replace(FULL.rl, iterations=1),
        rl_checkpoints=20,
        lm=dataclasses.replace(FULL.lm, steps=2),
    ),
    # Tiny models, only so that tests/test_benchmarks_storage_smoke.py runs every path.
    "smoke": Preset(
        rl=PPOConfig(hidden=16, envs=2, steps=16, epochs=1, minibatches=2, iterations=1),
        rl_checkpoints=3,
        lm=LMConfig(layers=4, d_model=32, heads=2, context=16, batch=2, steps=1),
        lm_checkpoints=3,
        finetune_lr=3e-4,
        finetune_checkpoints=3,
        corpus_bytes=16 * 1024,
        finetune_bytes=16 * 1024,
    ),
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick", dest="mode", action="store_const", const="quick", help="~30 s version"
    )
    mode.add_argument(
        "--smoke", dest="mode", action="store_const", const="smoke", help="tiny, for the test"
    )
    parser.add_argument("--dir", help="parent of the scratch directory (default: system temp)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every run (default 0)")
    parser.set_defaults(mode="full")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the three trainings in a scratch directory that is removed afterwards."""
    args = parse_args(argv)
    preset = PRESETS[args.mode]
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    print("\n".join(describe(args)), flush=True)
    workdir = tempfile.mkdtemp(prefix="castore-storage-", dir=args.dir)
    try:
        castore_s, torch_s = warm_up(workdir)
        print(
            f"first save in this process (a 64-byte state, untimed in the tables): castore "
            f"{castore_s:.3f} s, torch.save {torch_s:.3f} s",
            flush=True,
        )
        results = [*bench_rl(preset, workdir, args.seed), *bench_lm(preset, workdir, args.seed)]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("\nsummary (all checkpoints of each run; 'later' = every checkpoint after the first)")
    print(format_summary(results))
    print(
        f"\n1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after; "
        f"total {time.perf_counter() - started:.0f} s"
    )
    return 0


def bench_rl(preset: Preset, workdir: str, seed: int) -> list[RunResult]:
    """PPO on CartPole: model + optimizer, and the policy's weights alone, side by side."""
    c = preset.rl
    title = (
        f"PPO on CartPole-v1: actor and critic MLPs 2x{c.hidden} tanh, Adam lr {c.lr:g}; "
        f"per checkpoint {c.iterations} x (rollout of {c.envs} envs x {c.steps} steps, "
        f"{c.epochs} epochs x {c.minibatches} minibatches)"
    )
    torch.manual_seed(seed)
    agent = PPO(c, seed)
    both = SideBySide("rl-ppo", f"{title}; model + optimizer", TARGET_DENSE, workdir)
    alone = SideBySide("rl-ppo-policy", f"{title}; model weights alone", TARGET_POLICY, workdir)

    def state() -> dict[str, object]:
        return {"model": agent.model.state_dict(), "optimizer": agent.optimizer.state_dict()}

    for epoch in range(preset.rl_checkpoints):
        with one_torch_thread():
            metric = agent.train()
        both.save(epoch, state(), metric)
        alone.save(epoch, agent.model.state_dict(), metric)
    results = [both.finish(state()), alone.finish(agent.model.state_dict())]
    for result in results:
        print_run(result)
    return results


def bench_lm(preset: Preset, workdir: str, seed: int) -> list[RunResult]:
    """The language model trained densely, then its last quarter fine-tuned on other text."""
    c = preset.lm
    text = read_corpus(preset.corpus_bytes + preset.finetune_bytes)
    torch.manual_seed(seed)
    model = TinyGPT(c)
    shape = (
        f"byte-level GPT, {c.layers} layers, d_model {c.d_model}, {c.heads} heads, "
        f"context {c.context}, batch {c.batch}"
    )
    dense = SideBySide(
        "lm",
        f"{shape}, AdamW lr {c.lr:g} on all weights, {c.steps} steps per checkpoint, "
        f"on the first {human_bytes(preset.corpus_bytes)} of the stdlib's .py files; "
        "model + optimizer",
        TARGET_DENSE,
        workdir,
    )
    trainer = LMTrainer(model, list(model.parameters()), text[: preset.corpus_bytes], c, seed)
    run_training([dense], trainer, preset.lm_checkpoints)
    print_run(pretrained := dense.finish(training_state(trainer), keep_store=True))

    tune = dataclasses.replace(c, lr=preset.finetune_lr)
    tuner = LMTrainer(model, trainable_tail(model), text[preset.corpus_bytes :], tune, seed + 1)
    what = (
        f"the model above fine-tuned: last {max(1, c.layers // 4)} of {c.layers} blocks, "
        f"final norm and head train (the rest frozen, not in the optimizer), AdamW lr "
        f"{tune.lr:g}, {tune.steps} steps per checkpoint, on the next "
        f"{human_bytes(preset.finetune_bytes)}; model + optimizer"
    )
    alone = SideBySide("lm-finetune", f"{what}; a store of its own", TARGET_FINETUNE, workdir)
    beside = SideBySide(
        "lm-finetune-shared",
        f"{what}; saved into the pre-training run's store, where its frozen weights "
        "dedup (bytes counted: this run's only)",
        TARGET_FINETUNE,
        workdir,
        store_dir=dense.store_dir,
    )
    run_training([alone, beside], tuner, preset.finetune_checkpoints)
    finetuned = [side.finish(training_state(tuner)) for side in (alone, beside)]
    shutil.rmtree(dense.root, ignore_errors=True)
    for result in finetuned:
        print_run(result)
    return [pretrained, *finetuned]


def training_state(trainer: LMTrainer) -> dict[str, object]:
    return {"model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict()}


def run_training(sides: Sequence[SideBySide], trainer: LMTrainer, checkpoints: int) -> None:
    for epoch in range(checkpoints):
        with one_torch_thread():
            metric = trainer.train()
        for side in sides:
            side.save(epoch, training_state(trainer), metric)


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Train on one torch thread, save with the default.

    On the shared two-core reference machine a second OpenMP thread made these small
    models' steps 2 to 7 times slower, spinning against the other jobs; one thread also
    makes every run's bytes the same on any machine with the same CPU features.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def describe(args: argparse.Namespace) -> list[str]:
    """The header: what was measured, on what, at which castore source."""
    return [
        f"castore {castore.__version__} storage benchmark ({args.mode}, seed {args.seed}), "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"machine: {os.cpu_count()} CPUs, {platform.platform()}, Python "
        f"{platform.python_version()}, torch {torch.__version__}; training on 1 torch thread, "
        f"saves with {torch.get_num_threads()}",
        f"castore source: {source_revision()}",
        "each checkpoint is saved by castore (run.save into a local directory store, default "
        "options) and by torch.save (a new file), each call timed alone after an untimed "
        "os.sync()",
        "ratios: castore / torch.save, so < 1 means castore stores fewer bytes or saves "
        "faster; castore stored = SaveInfo.stored_bytes",
    ]


def source_revision() -> str:
    """The git commit of the checkout and whether src/ differs from it."""
    repo = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=False
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("log", "-1", "--format=%h")
    if not commit:
        return "not a git checkout"
    dirty = git("status", "--porcelain", "--", "src")
    return f"commit {commit}, src/ {'with uncommitted changes' if dirty else 'clean'}"


def print_run(result: RunResult) -> None:
    print(f"\n{result.name}: {result.title}")
    print(
        f"state: {result.tensors} tensors, {human_bytes(result.logical_bytes)} per checkpoint; "
        f"{len(result.rows)} checkpoints; the last one reloaded bit for bit"
    )
    print(format_run(result), flush=True)


def format_run(result: RunResult) -> str:
    """One row per checkpoint, then the run's total."""
    head = (
        "epoch",
        "castore stored",
        "torch.save",
        "x bytes",
        "castore s",
        "torch.save s",
        "x time",
        "training",
    )
    rows = [
        (
            str(r.epoch),
            human_bytes(r.castore_bytes),
            human_bytes(r.torch_bytes),
            f"{r.castore_bytes / r.torch_bytes:.3f}",
            f"{r.castore_s:.3f}",
            f"{r.torch_s:.3f}",
            f"{r.castore_s / r.torch_s:.2f}",
            r.metric,
        )
        for r in result.rows
    ]
    rows.append(
        (
            "total",
            human_bytes(result.castore_bytes),
            human_bytes(result.torch_bytes),
            f"{result.bytes_ratio:.3f}",
            f"{sum(r.castore_s for r in result.rows):.3f}",
            f"{sum(r.torch_s for r in result.rows):.3f}",
            f"{result.time_ratio:.2f}",
            "",
        )
    )
    return aligned(head, rows, numeric=set(range(7)))


def format_summary(results: Sequence[RunResult]) -> str:
    """Totals per run: bytes against the target, and save time, first and later apart."""
    head = (
        "run",
        "ckpts",
        "castore stored",
        "blobs/ on disk",
        "store on disk",
        "torch.save",
        "x bytes",
        "target",
        "met",
        "x bytes later",
        "x time",
        "x time first",
        "x time later",
    )
    rows = [
        (
            r.name,
            str(len(r.rows)),
            human_bytes(r.castore_bytes),
            human_bytes(r.blobs_bytes),
            human_bytes(r.store_bytes),
            human_bytes(r.torch_bytes),
            f"{r.bytes_ratio:.3f}",
            f"<= {r.target:.2f}",
            "yes" if r.bytes_ratio <= r.target else "NO",
            f"{r.later_bytes_ratio:.3f}",
            f"{r.time_ratio:.2f}",
            f"{r.first_time_ratio:.2f}",
            f"{r.later_time_ratio:.2f}",
        )
        for r in results
    ]
    return aligned(head, rows, numeric=set(range(1, 13)) - {8})


if __name__ == "__main__":
    sys.exit(main())
