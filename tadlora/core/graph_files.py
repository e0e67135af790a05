"""Graph files: a static communication graph written by the user, as JSON or an edge list."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

Edge = tuple[int, int, str]  # (i, j, where in the file)


def from_file(path: str | Path | None) -> np.ndarray:
    """Static graph from a user file, in one of two formats.

    JSON (the text starts with "{"): `{"n": 4, "edges": [[0, 1], [1, 2]]}`.
    Edge list: one "i j" pair of 0-based node indices per line; '#' starts a comment; blank lines
    are ignored; an optional first line "n 10" gives the number of nodes.
    In both formats n is optional and defaults to 1 + the largest index (give it to have isolated
    nodes at the end). Edges are undirected; duplicates (also "j i" after "i j") are merged.
    Raises ValueError naming the file, the line (or edge) and what to fix on a missing file,
    a malformed line, a self-loop or an index out of range.
    """
    if path is None:
        raise ValueError("graph kind 'file' needs a path to a graph file")
    if not Path(path).is_file():
        raise ValueError(f"graph file {path} does not exist (or is not a file)")
    text = Path(path).read_text(encoding="utf-8")
    parse = _parse_json if text.lstrip().startswith("{") else _parse_edge_list
    n, edges = parse(text, str(path))
    return _edges_to_adjacency(edges, n, str(path))


def _parse_json(text: str, path: str) -> tuple[int | None, list[Edge]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"graph file {path}: invalid JSON at line {err.lineno}: {err.msg}"
        ) from err
    unknown = set(data) - {"n", "edges"}
    if unknown or not isinstance(data.get("edges"), list):
        raise ValueError(
            f'graph file {path}: expected {{"n": <int>, "edges": [[i, j], ...]}}, '
            f"got keys {sorted(data)}"
        )
    n = data.get("n")
    if n is not None and not _is_int(n):
        raise ValueError(f'graph file {path}: "n" must be an integer, got {n!r}')
    edges = []
    for k, e in enumerate(data["edges"]):
        if not (isinstance(e, list) and len(e) == 2 and all(_is_int(v) for v in e)):
            raise ValueError(f"graph file {path}, edges[{k}]: expected [i, j] integers, got {e!r}")
        edges.append((e[0], e[1], f"edges[{k}]"))
    return n, edges


def _parse_edge_list(text: str, path: str) -> tuple[int | None, list[Edge]]:
    n, edges = None, []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        tokens = raw.split("#", 1)[0].split()
        if not tokens:
            continue
        where = f"graph file {path}, line {lineno}"
        if len(tokens) == 2 and tokens[0] == "n" and tokens[1].isdigit():
            if n is not None or edges:
                raise ValueError(f"{where}: the 'n <count>' line must be the first line")
            n = int(tokens[1])
        elif len(tokens) == 2 and all(_is_int_token(t) for t in tokens):
            edges.append((int(tokens[0]), int(tokens[1]), f"line {lineno}"))
        else:
            raise ValueError(
                f"{where}: cannot parse {raw.strip()!r}; expected 'i j' (two node indices), "
                "'n <count>' as the first line, or a '#' comment"
            )
    return n, edges


def _edges_to_adjacency(edges: list[Edge], n: int | None, path: str) -> np.ndarray:
    if n is None:
        if not edges:
            raise ValueError(f"graph file {path}: no edges and no n given; cannot tell the size")
        n = 1 + max(max(i, j) for i, j, _ in edges)
    if n < 1:
        raise ValueError(f"graph file {path}: n must be >= 1, got {n}")
    adj = np.zeros((n, n), dtype=bool)
    for i, j, where in edges:
        if i == j:
            raise ValueError(f"graph file {path}, {where}: self-loop {i}-{j}; remove it")
        if not (0 <= i < n and 0 <= j < n):
            raise ValueError(
                f"graph file {path}, {where}: edge {i}-{j} is out of range; "
                f"with n = {n} node indices must be in 0..{n - 1}"
            )
        adj[i, j] = adj[j, i] = True  # duplicates merge here
    return adj


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_int_token(token: str) -> bool:
    return re.fullmatch(r"-?\d+", token) is not None
