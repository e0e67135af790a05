"""Task and topology labels: one function names a topology for tables and for file names."""

import numpy as np

from tadlora.core import topology
from tadlora.study.labels import task_label, topology_label


def test_topology_labels_for_tables_and_file_names():
    assert topology_label("er", 0.5) == "ER p=0.5"
    assert topology_label("er", 0.5, slug=True) == "er-p0.5"
    assert topology_label("pairs", 0.1) == "pairs p=0.1"
    assert topology_label("ring", 0.3) == topology_label("ring", 0.3, slug=True) == "ring"
    assert topology_label("file", 0.5, "g/graph.txt") == "file graph.txt"
    assert topology_label("file", 0.5, "g/graph.txt", slug=True) == "file-graph"


def test_a_new_graph_with_an_edge_probability_is_labelled_with_it(monkeypatch):
    def star(n: int, seed: int, round: int, p: float) -> np.ndarray:
        return np.zeros((n, n), dtype=bool)

    monkeypatch.setitem(topology.GRAPHS, "star", star)
    assert topology_label("star", 0.2) == "star p=0.2"
    assert topology_label("star", 0.2, slug=True) == "star-p0.2"


def test_task_labels():
    assert task_label("rotten_tomatoes") == "rotten_tomatoes"
    assert task_label("files", "../shared/data/glue-lite/mnli") == "mnli"
    assert task_label("files", "x/mnli", "validation_mismatched") == "mnli-validation_mismatched"
    assert task_label("hf", "", "sst2") == "sst2"
