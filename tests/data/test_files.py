"""Local dataset directories (source 'files'): formats, labels, and errors naming the file
and line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tadlora.data.files import load_files
from tadlora.data.sources import load_source

GLUE_LITE = Path(__file__).resolve().parents[3] / "shared" / "data" / "glue-lite"


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


def test_labels_json_with_a_byte_order_mark_loads(tmp_path) -> None:
    _dir(tmp_path, ROWS)
    (tmp_path / "labels.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(["yes", "no"]).encode())
    assert load_source("files", str(tmp_path))[0].label_names == ["yes", "no"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_inferred_names_map_every_label_by_name(tmp_path, fmt: str) -> None:
    """Labels -1 and 0 (not ids 0..n-1): the names are ["-1", "0"] and 0 is "0", not id 0."""
    rows = [{"text_a": "x", "label": v} for v in (0, -1, 0)]
    train, _ = load_source("files", _dir(tmp_path, rows, fmt))
    assert train.label_names == ["-1", "0"] and train.labels.tolist() == [1, 0, 1]


def test_files_tolerates_byte_order_mark(tmp_path) -> None:
    (tmp_path / "train.tsv").write_text("\ufefftext_a\tlabel\nx\tyes\nz\tno\n",
                                        encoding="utf-8")
    (tmp_path / "validation.jsonl").write_text('\ufeff{"text_a": "y", "label": "no"}\n')
    train, val = load_source("files", str(tmp_path))
    assert train.text_a == ["x", "z"] and val.labels.tolist() == [0]


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
    ('{"label": "yes"}', r"train\.jsonl:2: text fields \(\) but \('text_a',\) on the first"),
    ('{"text_a": "x"}', r"train\.jsonl:2: missing field 'label'"),
    ('{"text_a": "x", "label": "maybe"}',
     r"train\.jsonl:2: label 'maybe' is not in the label set .*labels\.json"),
    ('{"text_a": "x", "text_b": "y", "label": "no"}',
     r"train\.jsonl:2: text fields \('text_a', 'text_b'\) but \('text_a',\) on the first row"),
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


@pytest.mark.parametrize("a, b", [("text", None), ("sentence", None), ("sentence1", "sentence2"),
                                  ("premise", "hypothesis"), ("question1", "question2"),
                                  ("question", "sentence")])
def test_the_glue_and_hub_column_names_are_read(tmp_path, a: str, b: str | None) -> None:
    """A file written from a Hugging Face dataset keeps its columns: SST-2's sentence, MNLI's
    premise/hypothesis, QNLI's question/sentence (a pair, not the single sentence), ..."""
    rows = [{a: r["text_a"], **({b: r["text_b"]} if b else {}), "label": r["label"], "idx": i}
            for i, r in enumerate(ROWS)]
    train, _ = load_source("files", _dir(tmp_path, rows, "csv"))
    assert train.text_a == [r["text_a"] for r in ROWS]
    assert train.text_b == ([r["text_b"] for r in ROWS] if b else None)


def test_a_file_without_a_text_field_names_the_accepted_ones(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"train\.csv:2: no text field; name it text_a .*premise"):
        load_source("files", _dir(tmp_path, [{"review": "x", "label": 0}], "csv"))


def test_missing_and_empty_files_are_explained(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not found.*train.*validation"):
        load_source("files", str(tmp_path / "nope"))
    (tmp_path / "train.jsonl").write_text("")
    with pytest.raises(FileNotFoundError, match="data directory is a file, not a directory"):
        load_source("files", str(tmp_path / "train.jsonl"))
    with pytest.raises(FileNotFoundError, match="no validation.jsonl, validation.csv"):
        load_source("files", str(tmp_path))
    (tmp_path / "validation.jsonl").write_text('{"text_a": "x", "label": 0}\n')
    with pytest.raises(ValueError, match=r"train\.jsonl: no examples"):
        load_source("files", str(tmp_path))
    (tmp_path / "train.jsonl").unlink()
    (tmp_path / "train.tsv").write_text("text_a\tlabel\nx\t0\ny\n")
    with pytest.raises(ValueError, match=r"train\.tsv:3: 1 fields, header has 2"):
        load_source("files", str(tmp_path))



def test_a_label_outside_the_label_set_names_file_line_label_and_origin(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text_a": "x", "label": 0}\n'
                                          '{"text_a": "y", "label": 1}\n')
    (tmp_path / "validation.jsonl").write_text('{"text_a": "x", "label": 0}\n'
                                               '{"text_a": "z", "label": 5}\n')
    (tmp_path / "labels.json").write_text('["neg", "pos"]')
    with pytest.raises(ValueError, match=r"validation\.jsonl:2: label 5 is not in the label set "
                                         r"\['neg', 'pos'\] \(.*labels\.json\)"):
        load_files(str(tmp_path), None, 0, 0)
    (tmp_path / "labels.json").unlink()
    (tmp_path / "validation.jsonl").write_text('{"text_a": "x", "label": -1}\n')
    train, val = load_files(str(tmp_path), None, 0, 0)  # -1 among the inferred names
    assert val.label_names[val.labels[0]] == "-1"


def test_bytes_that_are_not_utf8_name_the_file(tmp_path):
    (tmp_path / "train.csv").write_bytes(b"text_a,label\ncaf\xe9,1\n")
    (tmp_path / "validation.csv").write_text("text_a,label\nx,0\n")
    with pytest.raises(ValueError, match=r"train\.csv is not UTF-8 text.*iconv"):
        load_files(str(tmp_path), None, 0, 0)


def _csv_dir(tmp_path: Path, train_labels: list[str], val_labels: list[str]) -> str:
    (tmp_path / "train.csv").write_text("text,label\n" + "".join(
        f"t{i},{v}\n" for i, v in enumerate(train_labels)))
    (tmp_path / "validation.csv").write_text("text,label\n" + "".join(
        f"v,{v}\n" for v in val_labels))
    return str(tmp_path)


def test_an_empty_label_names_the_row(tmp_path):
    with pytest.raises(ValueError, match=r"train\.csv:3: label must be a name or an integer, "
                                         r"got ''; fill it in or drop the row"):
        load_files(_csv_dir(tmp_path, ["1", "", "0"], ["0"]), None, 0, 0)


@pytest.mark.parametrize("odd", ["1.0", "1 "])
def test_integer_labels_mixed_with_other_strings_fail_naming_both_rows(tmp_path, odd):
    """A pandas float column (1.0) or a stray space would otherwise become a class of its own."""
    with pytest.raises(ValueError, match=rf"train\.csv:3: label '{odd}' is not an integer, "
                                         r"but .*train\.csv:2 gives the integer label '0'"):
        load_files(_csv_dir(tmp_path, ["0", odd, "1"], ["0"]), None, 0, 0)


def test_negative_integer_labels_are_ordered_by_value(tmp_path):
    train, val = load_files(_csv_dir(tmp_path, ["-1", "-2", "0", "-10"], ["-2"]), None, 0, 0)
    assert train.label_names == ["-10", "-2", "-1", "0"]
    assert train.labels.tolist() == [2, 1, 3, 0] and val.labels.tolist() == [1]


def test_labels_without_a_training_example_warn(tmp_path):
    """Integer labels 0, 1, 5 are ids: outputs 2-4 are never trained, likely not meant."""
    with pytest.warns(UserWarning, match=r"3 of the 6 labels have no training example "
                                         r"\('2', '3', '4'\)"):
        train, _ = load_source("files", _csv_dir(tmp_path, ["0", "1", "5"], ["1"]))
    assert train.labels.tolist() == [0, 1, 5]


def test_a_huge_integer_label_names_the_row_instead_of_exhausting_memory(tmp_path):
    """Integer labels are ids 0..max: an id column or a year as label would make ~max classes."""
    with pytest.raises(ValueError, match=r"train\.csv:3: integer label 1000000 would make "
                                         r"1000001 classes .*labels\.json"):
        load_files(_csv_dir(tmp_path, ["0", "1000000", "1"], ["0"]), None, 0, 0)


def test_a_csv_field_over_the_csv_modules_limit_names_the_file_and_line(tmp_path):
    (tmp_path / "train.csv").write_text(f'text,label\nx,0\n"{"y" * 200_000}",1\n')
    (tmp_path / "validation.csv").write_text("text,label\nx,0\n")
    with pytest.raises(ValueError, match=r"train\.csv:3: not valid CSV \(field larger than field "
                                         r"limit .*train\.jsonl"):
        load_files(str(tmp_path), None, 0, 0)
