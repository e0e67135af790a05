"""Graph files: JSON or edge lists, their error messages, and the static process they give."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tadlora.core import topology as tp
from tadlora.core.graph_files import from_file
from tests.conftest import is_adjacency as _is_adjacency


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _edges(adj: np.ndarray) -> list[tuple[int, int]]:
    return [(int(i), int(j)) for i, j in zip(*np.nonzero(np.triu(adj)), strict=True)]


def test_file_json(tmp_path: Path) -> None:
    path = _write(tmp_path, "g.json", json.dumps({"n": 3, "edges": [[0, 1], [1, 2]]}))
    adj = from_file(path)
    assert _is_adjacency(adj, 3) and _edges(adj) == [(0, 1), (1, 2)]


def test_graph_files_with_a_byte_order_mark_load(tmp_path: Path) -> None:
    for name, text in (("g.json", '{"n": 3, "edges": [[0, 1], [1, 2]]}'), ("g.txt", "0 1\n1 2\n")):
        (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + text.encode())
        assert _edges(from_file(str(tmp_path / name))) == [(0, 1), (1, 2)]


def test_file_edge_list_with_comments_and_duplicates(tmp_path: Path) -> None:
    text = "# a path\n\n0 1  # first\n1 2\n2 1\n0 1\n"
    with pytest.warns(UserWarning, match=r"1 edge\(s\) are listed in one direction only "
                                         r"\(e.g. \(0, 1\)\).*undirected"):
        adj = from_file(_write(tmp_path, "g.txt", text))
    assert _is_adjacency(adj, 3) and _edges(adj) == [(0, 1), (1, 2)]


def test_edges_all_listed_once_or_all_both_ways_are_not_warned(tmp_path: Path) -> None:
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        once = from_file(_write(tmp_path, "a.txt", "0 1\n1 2\n"))
        both = from_file(_write(tmp_path, "b.txt", "0 1\n1 0\n1 2\n2 1\n"))
    assert np.array_equal(once, both)


def test_a_graph_file_too_large_for_memory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"n = 100000000; graph files hold 1 to 10000 nodes"):
        from_file(_write(tmp_path, "n.txt", "n 100000000\n0 1\n"))
    with pytest.raises(ValueError, match="graph files hold 1 to 10000 nodes"):
        from_file(_write(tmp_path, "big.json", '{"edges": [[0, 99999999999]]}'))
    big = tmp_path / "huge.txt"
    with open(big, "wb") as f:
        f.truncate((64 << 20) + 1)
    with pytest.raises(ValueError, match="huge.txt has 67108865 bytes, more than"):
        from_file(big)


def test_a_graph_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "g.txt"
    path.write_bytes(b"0 1\n\xff\xfe 2\n")
    with pytest.raises(ValueError, match=r"graph file .*g.txt is not UTF-8 text"):
        from_file(path)


def test_file_edge_list_with_n_line(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"5 separate components \(0 1; 2; 3; 4; \.\.\.\)"):
        adj = from_file(_write(tmp_path, "g.txt", "# header\nn 6\n0 1\n"))  # 2-5 isolated
    assert adj.shape == (6, 6) and _edges(adj) == [(0, 1)]


def test_a_graph_in_pieces_warns_naming_them(tmp_path: Path) -> None:
    """Two rings of 10 and a pair: 3 components, each listed by its first 8 nodes."""
    ring = [(k, (k + 1) % 10) for k in range(10)]
    edges = ring + [(i + 10, j + 10) for i, j in ring] + [(20, 21)]
    text = "".join(f"{i} {j}\n" for i, j in edges)
    with pytest.warns(UserWarning, match=r"3 separate components \(0 1 2 3 4 5 6 7 \.\.\.; "
                                         r"10 11 12 13 14 15 16 17 \.\.\.; 20 21\).*rho = 1"):
        adj = from_file(_write(tmp_path, "g.txt", text))
    assert len(_edges(adj)) == 21


def test_file_graph_process_is_static(tmp_path: Path) -> None:
    path = _write(tmp_path, "g.txt", "0 1\n1 2\n2 3\n3 0\n")
    mixing = tp.mixing_process("file", 4, 0, path=path)
    np.testing.assert_array_equal(mixing(0), mixing(99))
    assert tp.contraction(mixing, 4, samples=2) == pytest.approx(1 / 9)  # 4-cycle: (1/3)^2


@pytest.mark.parametrize(
    "text,match",
    [
        ("0 1\n2 2\n", r"line 2: self-loop 2-2"),
        ("n 3\n0 1\n1 3\n", r"line 3: edge 1-3 is out of range; with n = 3 .* 0\.\.2"),
        ("0 1\n-1 2\n", r"line 2: edge -1-2 is out of range"),
        ("0 1\n1 2 3\n", r"line 2: cannot parse '1 2 3'; expected 'i j'"),
        ("0 1\nzero one\n", r"line 2: cannot parse"),
        ("0 1\n--1 2\n", r"line 2: cannot parse"),
        ("0 1\nn 4\n", r"line 2: the 'n <count>' line must be the first line"),
        ("# nothing\n", r"no edges and no n given"),
        ('{"n": 3, "edges": [[0, 1], [1]]}', r"edges\[1\]: expected \[i, j\] integers"),
        ('{"n": 3, "edges": [[0, 3]]}', r"edges\[0\]: edge 0-3 is out of range"),
        ('{"n": 3, "edge": [[0, 1]]}', r"expected \{\"n\": <int>"),
        ('{"n": "3", "edges": []}', r'"n" must be an integer'),
        ('{"n": 3, "edges": [[0, 1]', r"invalid JSON at line 1"),
    ],
)
def test_file_errors_name_file_and_line(tmp_path: Path, text: str, match: str) -> None:
    path = _write(tmp_path, "bad.txt", text)
    with pytest.raises(ValueError, match=match) as err:
        from_file(path)
    assert path in str(err.value)


def test_file_size_must_match_clients(tmp_path: Path) -> None:
    path = _write(tmp_path, "g.txt", "n 8\n" + "".join(f"{k} {k + 1}\n" for k in range(7)))
    with pytest.raises(
        ValueError, match=re.escape(f"graph file {path} has 8 nodes but clients.n = 10")
    ):
        tp.graph_process("file", 10, 0, path=path)


def test_file_missing_or_not_given(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        tp.graph_process("file", 4, 0, path=str(tmp_path / "nope.txt"))
    with pytest.raises(ValueError, match="needs a path"):
        tp.graph_process("file", 4, 0)
