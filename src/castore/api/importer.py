"""Import a directory of ``model_0010.pt`` files and their YAML/JSON sidecars into a run.

Each checkpoint file becomes the commit ``CheckpointManager.save_agent`` would have made
(``{"agent": <what the file held>, "metadata": <sidecar>}``), in epoch order so deltas
chain; ``trainer_state.pt`` becomes the run's trainer state. Epochs come from the sidecar's
``epoch`` or the digits that end the file name. ``.pt`` files are read with
``weights_only=True`` unless the caller trusts them. Every file gets a line in the report:
imported, skipped and why. An epoch already in the run is skipped, so importing again
only adds what is new. A file ``castore export`` wrote comes back with its sidecar's
metadata, step and metrics, and a ``.pt`` of a manager checkpoint as that very tree.
"""

from __future__ import annotations

import json
import pickle
import pickletools
import re
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import torch

from castore.api.manager import CheckpointManager
from castore.api.metadata import STEP_KEYS, split_agent_tree, split_metadata
from castore.errors import ConflictError, InvalidCheckpointError, NotFoundError

if TYPE_CHECKING:
    import os
    from collections.abc import Iterable

__all__ = ["ImportItem", "ImportReport", "import_checkpoints"]

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")
SIDECAR_SUFFIXES = (".yaml", ".yml", ".json")
TRAINER_STEM = "trainer_state"
_TRAILING_DIGITS = re.compile(r"(\d+)$")
_EXPORT_FIELDS = frozenset({"uri", "run", "epoch", "step", "metrics", "metadata"})


@dataclass(frozen=True, slots=True)
class ImportItem:
    """One source file and what became of it: ``imported``, ``would import`` (dry run)
    or ``skipped`` with the ``reason``."""

    path: str
    kind: str
    epoch: int | None
    action: str
    reason: str = ""
    new_bytes: int = 0


@dataclass(frozen=True, slots=True)
class ImportReport:
    items: tuple[ImportItem, ...]

    @property
    def imported(self) -> list[ImportItem]:
        return [item for item in self.items if item.action != "skipped"]

    @property
    def skipped(self) -> list[ImportItem]:
        return [item for item in self.items if item.action == "skipped"]


@dataclass(frozen=True, slots=True)
class _Candidate:
    path: Path
    kind: str
    sidecar: Path | None


def import_checkpoints(
    sources: Iterable[str | os.PathLike[str]],
    store_url: str,
    run: str,
    *,
    dry_run: bool = False,
    trust: bool = False,
    **storage_options: Any,
) -> ImportReport:
    """Import checkpoint files (or directories of them, searched recursively) into
    ``run`` of the store at ``store_url``. A dry run reads and checks every file and
    writes nothing, not even a new store.

    Raises:
        NotFoundError: a source path does not exist.
    """
    try:
        manager = CheckpointManager(store_url, run, create=not dry_run, **storage_options)
    except NotFoundError:
        if not dry_run:
            raise
        manager = None
    return _import(sources, manager, run, dry_run=dry_run, trust=trust)


def _import(
    sources: Iterable[str | os.PathLike[str]],
    manager: CheckpointManager | None,
    run: str,
    *,
    dry_run: bool,
    trust: bool,
) -> ImportReport:
    candidates, items = _scan([Path(s) for s in sources])
    planned: list[tuple[_Candidate, int | None, dict[str, Any]]] = []
    for candidate in candidates:
        try:
            sidecar = _read_sidecar(candidate.sidecar) if candidate.sidecar else {}
        except _Skip as skip:
            epoch = _epoch_of(candidate.path, {})
            items.append(
                ImportItem(str(candidate.path), candidate.kind, epoch, "skipped", str(skip))
            )
            continue
        planned.append((candidate, _epoch_of(candidate.path, sidecar), sidecar))

    # kind -> epoch -> why another file of that epoch is skipped
    taken: dict[str, dict[int, str]] = {"checkpoint": {}, "trainer state": {}}
    if manager is not None:
        for epoch in manager.run.epochs():
            taken["checkpoint"][epoch] = f"epoch {epoch} already in run {run}"
        if (latest := manager.trainer_run.latest()) is not None:
            taken["trainer state"][latest] = f"epoch {latest} already in the trainer state"
    planned.sort(key=lambda p: (p[0].kind, -1 if p[1] is None else p[1], str(p[0].path)))
    if dry_run:
        manager = None
    for candidate, named_epoch, sidecar in planned:
        item = ImportItem(str(candidate.path), candidate.kind, named_epoch, "would import")
        try:
            item = _import_one(manager, candidate, item, sidecar, taken, trust=trust)
        except _Skip as skip:
            item = replace(item, action="skipped", reason=str(skip))
        except (InvalidCheckpointError, ConflictError) as exc:
            item = replace(item, action="skipped", reason=str(exc).splitlines()[0])
        items.append(item)
    items.sort(key=lambda i: (i.kind, -1 if i.epoch is None else i.epoch, i.path))
    return ImportReport(tuple(items))


def _import_one(
    manager: CheckpointManager | None,
    candidate: _Candidate,
    item: ImportItem,
    sidecar: dict[str, Any],
    taken: dict[str, dict[int, str]],
    *,
    trust: bool,
) -> ImportItem:
    """Read one file (only now, so one file's tensors are in memory at a time) and
    commit it, unless its epoch is taken or this is a dry run (no ``manager``)."""
    if item.epoch is not None and (skipped := _taken(item, taken[candidate.kind])):
        return skipped
    obj, metadata = _read(candidate.path, trust=trust)
    metadata.update(sidecar)
    if item.epoch is None:
        item = replace(item, epoch=_epoch_of(candidate.path, metadata, required=True))
        if skipped := _taken(item, taken[candidate.kind]):
            return skipped
    epoch: int = item.epoch  # type: ignore[assignment]
    if manager is not None:
        item = _commit(manager, candidate.kind, epoch, obj, metadata, item)
    taken[candidate.kind][epoch] = f"epoch {epoch} is also in {candidate.path}, which goes first"
    return item


def _taken(item: ImportItem, taken: dict[int, str]) -> ImportItem | None:
    """``item`` skipped if its epoch is in the store or came from another file already,
    or for the trainer state (only the latest is kept) if a newer one is there; None
    when it can be imported."""
    assert item.epoch is not None
    reason = taken.get(item.epoch)
    if reason is None and item.kind == "trainer state" and taken and item.epoch < max(taken):
        reason = f"older than the trainer state of epoch {max(taken)}; only the latest is kept"
    return None if reason is None else replace(item, action="skipped", reason=reason)


def _commit(
    manager: CheckpointManager,
    kind: str,
    epoch: int,
    obj: Any,
    metadata: dict[str, Any],
    item: ImportItem,
) -> ImportItem:
    if kind == "trainer state":
        optimizer = obj.get("optimizer_state", obj) if isinstance(obj, dict) else obj
        step = obj.get("agent_step", 0) if isinstance(obj, dict) else 0
        manager.save_trainer_state(optimizer, epoch, step)
        new_bytes = manager.trainer_run.record(epoch).new_bytes
        return replace(item, action="imported", new_bytes=new_bytes)
    info = manager.commit_agent(obj, epoch, split_metadata(metadata))
    return replace(item, action="imported", new_bytes=info.new_bytes)


class _Skip(Exception):
    """A file that cannot be imported; the message is the report's reason."""


def _scan(sources: list[Path]) -> tuple[list[_Candidate], list[ImportItem]]:
    files: list[Path] = []
    for source in sources:
        if source.is_dir():
            files.extend(p for p in sorted(source.rglob("*")) if p.is_file())
        elif source.is_file():
            files.append(source)
        else:
            raise NotFoundError(f"import source {str(source)!r} does not exist")
    checkpoints = [p for p in files if p.suffix.lower() in CHECKPOINT_SUFFIXES]
    stems = {p.with_suffix("") for p in checkpoints}
    candidates = [
        _Candidate(p, "trainer state" if TRAINER_STEM in p.stem else "checkpoint", _sidecar(p))
        for p in checkpoints
    ]
    orphans = [
        ImportItem(str(p), "sidecar", None, "skipped", "no checkpoint file beside it")
        for p in files
        if p.suffix.lower() in SIDECAR_SUFFIXES and p.with_suffix("") not in stems
    ]
    return candidates, orphans


def _sidecar(path: Path) -> Path | None:
    for suffix in SIDECAR_SUFFIXES:
        candidate = path.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def _read(path: Path, *, trust: bool) -> tuple[Any, dict[str, Any]]:
    """The file's content and the metadata it carries itself."""
    if path.suffix.lower() == ".safetensors":
        return _read_safetensors(path)
    obj = _read_torch(path, trust=trust)
    if not isinstance(obj, dict):
        return obj, {}
    split = split_agent_tree(obj)  # the manager's layout: castore export
    return split if split is not None else (obj, _plain_entries(obj))


def _read_torch(path: Path, *, trust: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        error = str(exc).splitlines()[0] if trust else _pickle_error(path)
        if error is not None:
            raise _Skip(f"not a readable torch file: {error}") from exc
        raise _Skip(
            "holds pickled objects (a whole module?) that weights_only=True refuses; "
            "import with --trust if you trust the file"
        ) from exc
    except (AttributeError, ImportError) as exc:
        raise _Skip(
            f"its pickled classes cannot be imported here ({exc}); run the import where "
            "the training code is importable (castore.import_checkpoints from Python)"
        ) from exc
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise _Skip(f"not a readable torch file: {str(exc).splitlines()[0]}") from exc


def _pickle_error(path: Path) -> str | None:
    """Why the pickle inside a torch file (a zip archive's ``data.pkl``, or a legacy
    file's first pickle) does not parse, read without running it; None when it does.
    ``weights_only`` refuses a sound file that names classes and a broken one alike,
    and only the first is worth ``--trust``."""
    try:
        if not zipfile.is_zipfile(path):
            with path.open("rb") as stream:
                _parse_pickle(stream)
            return None
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("/data.pkl")]
            if not names:
                return "a zip archive without data.pkl"
            with archive.open(names[0]) as stream:
                _parse_pickle(stream)
    except (ValueError, zipfile.BadZipFile, OSError) as exc:
        return str(exc)
    return None


def _parse_pickle(stream: IO[bytes]) -> None:
    for _ in pickletools.genops(stream):
        pass


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    try:
        from safetensors import SafetensorError, safe_open
    except ImportError as exc:
        raise _Skip("reading .safetensors needs the safetensors package") from exc
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
            header = handle.metadata() or {}
    except SafetensorError as exc:
        raise _Skip(f"not a readable safetensors file: {exc}") from exc
    # castore export's own entries (castore.run, castore.epoch) say where the file came
    # from, not what the checkpoint was; its sidecar carries that.
    metadata = {k: _number_or_text(v) for k, v in header.items() if not k.startswith("castore.")}
    return tensors, metadata


def _read_sidecar(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _Skip(f"sidecar {path.name} is not valid JSON: {exc}") from exc
    else:
        try:
            import yaml
        except ImportError as exc:
            raise _Skip(f"reading {path.name} needs PyYAML (pip install castore[migrate])") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:  # one line for the report: the problem and where
            mark = getattr(exc, "problem_mark", None)
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise _Skip(f"sidecar {path.name} is not valid YAML: {problem}{where}") from exc
    if not isinstance(data, dict):
        raise _Skip(f"sidecar {path.name} is not a mapping")
    try:
        return split_metadata(_from_export(data)).plain
    except InvalidCheckpointError as exc:
        raise _Skip(f"sidecar {path.name}: {exc}") from exc


def _from_export(sidecar: dict[str, Any]) -> dict[str, Any]:
    """A ``castore export`` sidecar as the checkpoint's own metadata, plus its epoch, its
    step (unless the metadata has one) and the metrics the metadata lacks or that an
    evaluator annotated since; any other sidecar as it is."""
    metadata, metrics = sidecar.get("metadata"), sidecar.get("metrics")
    exported = isinstance(metadata, dict) and isinstance(metrics, dict)
    if not (exported and sidecar.keys() >= _EXPORT_FIELDS):
        return sidecar
    merged = {**metadata, "epoch": sidecar["epoch"]}
    merged.update((k, v) for k, v in metrics.items() if merged.get(k) != v)
    if sidecar["step"] is not None and not any(key in merged for key in STEP_KEYS):
        merged["step"] = sidecar["step"]
    return merged


def _epoch_of(path: Path, metadata: dict[str, Any], *, required: bool = False) -> int | None:
    """The metadata's ``epoch``, else the digits that end the file name."""
    value = metadata.get("epoch")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _TRAILING_DIGITS.search(path.stem)
    if match is not None:
        return int(match.group(1))
    if required:
        raise _Skip("no epoch: neither an 'epoch' entry nor digits ending the file name")
    return None


def _plain_entries(obj: dict[Any, Any]) -> dict[str, Any]:
    """Top-level numbers and strings of a ``{"model_state_dict": ..., "score": ...}`` file."""
    return {
        key: value
        for key, value in obj.items()
        if isinstance(key, str) and isinstance(value, bool | int | float | str)
    }


def _number_or_text(value: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value
