"""How tasks and topologies are named in run names, tables and plots."""

from __future__ import annotations

from pathlib import Path

from ..core import topology

DISPLAY = {"er": "ER"}  # a graph kind as tables show it, where it differs from its name


def task_label(source: str, path: str = "", task: str = "") -> str:
    """rotten_tomatoes / mnli (basename of a files dir) / sst2 (an hf task)."""
    if source == "files":
        return Path(path).name + (f"-{task}" if task else "")
    return task if source == "hf" else source


def topology_label(kind: str, p: float, path: str = "", slug: bool = False) -> str:
    """A topology as tables show it ('ER p=0.5', 'ring', 'file graph.txt') or, with slug, as
    file names spell it ('er-p0.5', 'ring', 'file-graph'): a graph drawn with an edge
    probability shows p, a graph read from a file shows the file."""
    params = topology.parameters(kind) if kind in topology.GRAPHS else set()
    if "p" in params:
        return f"{kind}-p{p:g}" if slug else f"{DISPLAY.get(kind, kind)} p={p:g}"
    if "path" in params:
        return f"{kind}-{Path(path).stem}" if slug else f"{kind} {Path(path).name}"
    return kind
