"""Checkpoints: per-client tensors and AdamW state in safetensors, plus a small JSON (round,
switch interval, the clients held), and finding the slices a resume restores from.

Nothing is pickled. A checkpoint is written into a temporary directory and renamed into place,
so a crash while writing leaves the previous checkpoint intact. The merged checkpoint of a run
(RUN_DIR/checkpoint) is a slice that holds every client; a distributed run also keeps one slice
per peer (RUN_DIR/peers/rank-K/round-R), so a resume with any number of processes reads the
rows it needs from whichever slices of one round hold them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .rundir import META, RunDir

ADAPTERS, OPTIMIZER = "adapters.safetensors", "optimizer.safetensors"
Tensors = dict[str, torch.Tensor]
Slice = tuple[int, range, Path]  # (round, clients held, folder)


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt or does not fit the run."""


def save(directory: str | Path, tensors: Tensors, moments: Tensors, meta: dict) -> Path:
    """Write checkpoint-form tensors (meta["round"] = the next round to run), atomically."""
    final = Path(directory)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / ADAPTERS))
    save_file(moments, str(tmp / OPTIMIZER))
    (tmp / META).write_text(json.dumps(meta, indent=1))
    old = final.with_name(final.name + ".old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def read(directory: Path) -> tuple[dict, Tensors, Tensors]:
    """(meta, tensors, moments) of one checkpoint folder."""
    if not (directory / META).is_file():
        old = directory.with_name(directory.name + ".old")
        hint = f" (an older one is at {old})" if old.exists() else ""
        raise CheckpointError(f"no checkpoint in {directory}{hint}: nothing to resume from")
    try:
        meta = json.loads((directory / META).read_text())
        return meta, load_file(str(directory / ADAPTERS)), load_file(str(directory / OPTIMIZER))
    except (OSError, ValueError, SafetensorError) as e:
        raise CheckpointError(f"checkpoint in {directory} is corrupt or incomplete ({e}); "
                              "restart the run without --resume, or restore the files") from e


def slices(run: RunDir, n: int) -> list[Slice]:
    """Every checkpoint slice in a run directory; the merged checkpoint holds all n clients."""
    out = []
    for d in [run.checkpoint, *run.peers.glob("rank-*/round-*")]:
        if (d / META).is_file() and not d.name.endswith((".tmp", ".old")):
            try:
                m = json.loads((d / META).read_text())
                lo, hi = m.get("clients", [0, n])
                out.append((int(m["round"]), range(lo, hi), d))
            except (ValueError, KeyError, TypeError) as e:
                raise CheckpointError(f"checkpoint in {d}: {META} is corrupt ({e}); restore "
                                      "it or restart the run without --resume") from e
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
              ) -> tuple[Tensors, Tensors]:
    """The rows of the clients `want` from the slices `chosen` (as `cover` gives them), after
    checking that each was made with switch interval `interval`."""
    tensors: dict[str, list[torch.Tensor]] = {}
    moments: dict[str, list[torch.Tensor]] = {}
    for held, d in chosen:
        meta, t, o = read(d)
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
            {k: torch.cat(v) if v[0].dim() else v[0] for k, v in moments.items()})
