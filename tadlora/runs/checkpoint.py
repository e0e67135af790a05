"""Checkpoints: per-client tensors and AdamW state in safetensors, plus a small JSON (round,
switch interval, the clients held), and finding the slices a resume restores from.

Nothing is pickled. A checkpoint is written into a temporary directory and renamed into place,
so a crash while writing leaves the previous checkpoint intact. Its JSON holds the sha256 of
each tensor file, checked on every read: a flipped byte is an error, never a resumed run. The
run's checkpoint before the last is kept (RUN_DIR/checkpoint.prev) for a resume to fall back
to. The merged checkpoint of a run (RUN_DIR/checkpoint) is a slice that holds every client; a
distributed run also keeps one slice per peer (RUN_DIR/peers/rank-K/round-R), so a resume with
any number of processes reads the rows it needs from whichever slices of one round hold them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .rundir import META, PREVIOUS, RunDir

ADAPTERS, OPTIMIZER = "adapters.safetensors", "optimizer.safetensors"
Tensors = dict[str, torch.Tensor]
Slice = tuple[int, range, Path]  # (round, clients held, folder)


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt or does not fit the run."""


class CorruptCheckpoint(CheckpointError):
    """A checkpoint whose files are not the bytes that were written (a resume passes over it)."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save(directory: str | Path, tensors: Tensors, moments: Tensors, meta: dict,
         keep: Path | None = None) -> Path:
    """Write checkpoint-form tensors (meta["round"] = the next round to run) with their
    checksums, atomically; `keep`: where the checkpoint it replaces is kept if intact (else
    removed; a corrupt one never displaces the good one a resume fell back to)."""
    final = Path(directory)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / ADAPTERS))
    save_file(moments, str(tmp / OPTIMIZER))
    sums = {name: sha256(tmp / name) for name in (ADAPTERS, OPTIMIZER)}
    (tmp / META).write_text(json.dumps({**meta, "sha256": sums}, indent=1))
    old = keep if keep and _intact(final) else final.with_name(final.name + ".old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    if old != keep:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _intact(directory: Path) -> bool:
    try:
        verify(directory, read_meta(directory))
    except CheckpointError:
        return False
    return True


def read_meta(directory: Path) -> dict:
    """A checkpoint's state.json, checked: a dict with an integer round >= 0."""
    file = directory / META
    try:
        meta = json.loads(file.read_text())
        if not isinstance(meta, dict) or not isinstance(meta.get("round"), int) \
                or meta["round"] < 0:
            raise ValueError(f"expected an object with an integer 'round' >= 0, got {meta!r:.80}")
        if not isinstance(meta.get("sha256", {}), dict):
            raise ValueError(f"'sha256' must be an object, got {meta['sha256']!r:.40}")
        lo, hi = meta.get("clients", [0, 1])
        if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo < hi):
            raise ValueError(f"'clients' must be [first, end], got {meta.get('clients')!r}")
    except (OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint in {directory}: {META} is malformed ({e}); restore "
                              "it, or restart the run without --resume") from e
    return meta


def verify(directory: Path, meta: dict) -> None:
    """The tensor files are the bytes that were written (when the checkpoint has checksums)."""
    for name, want in meta.get("sha256", {}).items():
        if not (directory / name).is_file() or sha256(directory / name) != want:
            raise CorruptCheckpoint(f"checkpoint in {directory}: {name} is missing or does not "
                                  "match its sha256 (corrupt on disk)")


def read(directory: Path) -> tuple[dict, Tensors, Tensors]:
    """(meta, tensors, moments) of one checkpoint folder, its checksums verified."""
    if not (directory / META).is_file():
        old = directory.with_name(directory.name + ".old")
        hint = f" (an older one is at {old})" if old.exists() else ""
        raise CheckpointError(f"no checkpoint in {directory}{hint}: a run saves one after its "
                              "first round; records from `tadlora keep` hold none")
    meta = read_meta(directory)
    verify(directory, meta)
    try:
        return meta, load_file(str(directory / ADAPTERS)), load_file(str(directory / OPTIMIZER))
    except (OSError, ValueError, SafetensorError) as e:
        raise CorruptCheckpoint(f"checkpoint in {directory} is corrupt or incomplete ({e}); "
                              "restart the run without --resume, or restore the files") from e


def slices(run: RunDir, n: int) -> list[Slice]:
    """Every checkpoint slice in a run directory; the merged checkpoint holds all n clients."""
    out = []
    for d in [run.checkpoint, run.path / PREVIOUS, *run.peers.glob("rank-*/round-*")]:
        if (d / META).is_file() and not d.name.endswith((".tmp", ".old")):
            m = read_meta(d)
            lo, hi = m.get("clients", [0, n])
            out.append((m["round"], range(lo, hi), d))
    return out


def cover(parts: list[Slice], rnd: int, want: range) -> list[tuple[range, Path]] | None:
    """Slices of round `rnd` that together hold the clients `want`, or None."""
    pos, chosen = want.start, []
    while pos < want.stop:
        hit = next(((c, d) for r, c, d in parts if r == rnd and pos in c), None)
        if hit is None:
            return None
        chosen.append(hit)
        pos = hit[0].stop
    return chosen


def read_rows(chosen: list[tuple[range, Path]], want: range, interval: int | None
              ) -> tuple[Tensors, Tensors, dict]:
    """The rows of the clients `want` from the slices `chosen` (as `cover` gives them), after
    checking that each was made with switch interval `interval`, and the first slice's
    state.json."""
    metas = []
    tensors: dict[str, list[torch.Tensor]] = {}
    moments: dict[str, list[torch.Tensor]] = {}
    for held, d in chosen:
        meta, t, o = read(d)
        metas.append(meta)
        if meta.get("switch_interval") != interval:
            raise CheckpointError(
                f"{d} was made with switch interval {meta.get('switch_interval')}, the config "
                f"now gives {interval}: the config or the code changed")
        rows = slice(max(want.start, held.start) - held.start,
                     min(want.stop, held.stop) - held.start)
        for k, x in t.items():
            tensors.setdefault(k, []).append(x[rows])
        for k, x in o.items():
            moments.setdefault(k, []).append(x[rows] if x.dim() else x)
    return ({k: torch.cat(v) for k, v in tensors.items()},
            {k: torch.cat(v) if v[0].dim() else v[0] for k, v in moments.items()}, metas[0])
