"""Graph files: a static communication graph written by the user, as JSON or an edge list."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np

Edge = tuple[int, int, str]  # (i, j, where in the file)
MAX_NODES = 10_000  # a dense n x n adjacency; more would exhaust memory
MAX_BYTES = 64 << 20  # the largest graph file read (a complete graph of 2000 nodes is ~20 MB)


def from_file(path: str | Path | None) -> np.ndarray:
    """Static graph from a user file, in one of two formats.

    JSON (the text starts with "{"): `{"n": 4, "edges": [[0, 1], [1, 2]]}`.
    Edge list: one "i j" pair of 0-based node indices per line; '#' starts a comment; blank lines
    are ignored; an optional first line "n 10" gives the number of nodes.
    In both formats n is optional and defaults to 1 + the largest index (give it to have isolated
    nodes at the end). Edges are undirected; duplicates (also "j i" after "i j") are merged.
    Raises ValueError naming the file, the line (or edge) and what to fix on a missing file,
    a malformed line, a self-loop, an index out of range, a file that is not UTF-8 text, more
    than MAX_NODES nodes or more than MAX_BYTES bytes. A file that lists some edges in both
    directions and others in one only (a directed graph?) gets a warning: all are undirected.
    """
    if path is None:
        raise ValueError("graph kind 'file' needs a path to a graph file")
    if not Path(path).is_file():
        raise ValueError(f"graph file {path} does not exist (or is not a file)")
    if Path(path).stat().st_size > MAX_BYTES:
        raise ValueError(f"graph file {path} has {Path(path).stat().st_size} bytes, more than "
                         f"the {MAX_BYTES} a graph of at most {MAX_NODES} nodes needs")
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is dropped
    except UnicodeDecodeError as e:
        raise ValueError(f"graph file {path} is not UTF-8 text ({e.reason}); write it as plain "
                         "text (edge list) or JSON") from e
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
    if not 1 <= n <= MAX_NODES:
        raise ValueError(f"graph file {path}: n = {n}; graph files hold 1 to {MAX_NODES} nodes "
                         "(the node count is n or 1 + the largest index)")
    _warn_one_directional(edges, path)
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
    _warn_disconnected(adj, path)
    return adj


def _components(adj: np.ndarray) -> list[list[int]]:
    """The connected components (node lists, each sorted), by breadth-first search."""
    seen = np.zeros(len(adj), dtype=bool)
    parts = []
    for start in range(len(adj)):
        if seen[start]:
            continue
        seen[start], frontier, part = True, [start], [start]
        while frontier:
            reached = np.flatnonzero(adj[frontier].any(axis=0) & ~seen)
            seen[reached] = True
            frontier = reached.tolist()
            part += frontier
        parts.append(sorted(part))
    return parts


def _warn_disconnected(adj: np.ndarray, path: str) -> None:
    """A graph in pieces never mixes across them: separate federations (rho = 1)."""
    parts = _components(adj)
    if len(parts) > 1:
        shown = "; ".join(" ".join(map(str, p[:8])) + (" ..." if len(p) > 8 else "")
                          for p in parts[:4])
        warnings.warn(f"graph file {path}: the graph has {len(parts)} separate components "
                      f"({shown}{'; ...' if len(parts) > 4 else ''}); clients in different ones "
                      "never exchange, so it never mixes (rho = 1); add edges between them if "
                      "that is not meant", UserWarning, stacklevel=3)


def _warn_one_directional(edges: list[Edge], path: str) -> None:
    """Both directions for some edges but one for others: likely a directed graph."""
    pairs = {(i, j) for i, j, _ in edges if i != j}
    one_way = [(i, j) for i, j in pairs if (j, i) not in pairs]
    if one_way and len(one_way) < len(pairs):
        warnings.warn(f"graph file {path}: {len(one_way)} edge(s) are listed in one direction "
                      f"only (e.g. {min(one_way)}) while others are listed both ways; the graph "
                      "is undirected, so every edge connects both ways", UserWarning,
                      stacklevel=3)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_int_token(token: str) -> bool:
    return re.fullmatch(r"-?\d+", token) is not None
