"""``castore demo``: a real training run checkpointed into castore, end to end.

Trains a CartPole policy (see ``cartpole``) on the CPU, saves model and Adam state every
epoch, then shows the run as ``castore ls`` would, the bytes castore stored against one
``torch.save`` file per checkpoint, and that the best checkpoint, loaded back, scores
exactly what it scored when it was saved.
"""

from __future__ import annotations

import io
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

import castore
from castore.cli.cartpole import Policy, evaluate, make_optimizer, train_epoch
from castore.cli.commands import checkpoint_columns, checkpoint_rows
from castore.cli.render import format_table, human_bytes

if TYPE_CHECKING:
    from collections.abc import Iterator

    from castore.api.run import Run
    from castore.api.store import Store

__all__ = ["RUN_NAME", "run_demo"]

RUN_NAME = "cartpole"
_ENCODER_SEED = 0


def run_demo(store_url: str, *, epochs: int) -> int:
    """Train for ``epochs`` epochs into a new run of the store at ``store_url``.

    An existing run is never touched: a second demo in the same store trains a fresh
    run named ``cartpole-2`` (then ``-3``...), so running it twice works.
    """
    store = castore.open(store_url)
    name, seed = _fresh_run(store)
    run = store.run(name)
    print(f"castore demo: training a CartPole policy with REINFORCE and Adam for {epochs} epochs")
    print(f"store {store.url}, run {run.name}, seed {seed}")
    with _single_thread():
        torch_save_bytes = _train(run, epochs, seed)
        rows, metrics = checkpoint_rows(run.summary_table())
        print()
        print(format_table(rows, checkpoint_columns(metrics)))
        print()
        _print_bytes(store, run, torch_save_bytes)
        print()
        return _check_best(run)


@contextmanager
def _single_thread() -> Iterator[None]:
    """One torch thread: the ops are tiny, so more threads only contend for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _fresh_run(store: Store) -> tuple[str, int]:
    """The first free name of ``cartpole``, ``cartpole-2``...; its index seeds the run."""
    taken = set(store.runs())
    name, seed = RUN_NAME, 0
    while name in taken:
        seed += 1
        name = f"{RUN_NAME}-{seed + 1}"
    return name, seed


def _train(run: Run, epochs: int, seed: int) -> int:
    """Train and save every epoch; return what ``torch.save`` files of each would take."""
    policy = _new_policy(seed)
    optimizer = make_optimizer(policy)
    generator = torch.Generator().manual_seed(seed)
    steps = torch_save_bytes = 0
    with tqdm(range(epochs), desc="training", unit="epoch", file=sys.stderr) as bar:
        for epoch in bar:
            avg_reward, n_steps = train_epoch(policy, optimizer, generator)
            steps += n_steps
            score = evaluate(policy)
            state = {
                "model": policy.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
            }
            run.save(
                state, epoch=epoch, step=steps, metrics={"score": score, "avg_reward": avg_reward}
            )
            buffer = io.BytesIO()
            torch.save(state, buffer)
            torch_save_bytes += buffer.getbuffer().nbytes
            bar.set_postfix(score=score)
    return torch_save_bytes


def _new_policy(seed: int) -> Policy:
    """The same frozen encoder in every run (a shared pretrained backbone), the head from
    ``seed``; torch's global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_ENCODER_SEED)
        policy = Policy()
        torch.manual_seed(seed)
        policy.head.reset_parameters()
    return policy


def _print_bytes(store: Store, run: Run, torch_save_bytes: int) -> None:
    from castore.blobstore.layout import manifest_prefix

    table = run.summary_table()
    blob_bytes = sum(table.column("stored_bytes").to_pylist())
    location = store.location
    manifest_bytes = location.fs.du(location.path(manifest_prefix(run.name)))
    stored = blob_bytes + manifest_bytes
    print(f"bytes for {table.num_rows} checkpoints of run '{run.name}':")
    print(f"  torch.save, one file per checkpoint  {human_bytes(torch_save_bytes):>10}")
    print(
        f"  castore, blobs and manifests         {human_bytes(stored):>10}"
        f"  ({torch_save_bytes / stored:.1f}x less)"
    )
    print("  The frozen 1 MiB encoder is stored once; each epoch adds only the chunks")
    print("  that changed: the policy head and the Adam state.")
    if len(store.runs()) > 1:
        print("  Earlier runs in this store hold the same encoder, so this run did not")
        print(f"  store it again; 'castore du {store.url}' shows the whole store.")


def _check_best(run: Run) -> int:
    """Load the best checkpoint back and score it again: it must match to the bit."""
    best = run.best("score")
    recorded = run.record(best).metrics["score"]
    state = run.load(best="score")
    policy = _new_policy(0)
    policy.load_state_dict(state["model"])
    score = evaluate(policy)
    print(f"best checkpoint: epoch {best}, recorded score {recorded!r}")
    if score != recorded:
        print(f"re-evaluated after loading from castore: score {score!r}, which does NOT match")
        return 1
    print(f"re-evaluated after loading from castore: score {score!r}, matches exactly")
    return 0
