"""Local data files: a directory with train.* and validation.* (jsonl, csv or tsv) and an
optional labels.json."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from .text import TextData

Record = tuple[int, dict[str, Any]]  # (line number, row)
MAX_LABELS = 100_000  # integer labels are ids 0..max: a larger max is not a label id


def _find_split(directory: Path, stem: str) -> Path | None:
    files = [directory / f"{stem}.{ext}" for ext in ("jsonl", "csv", "tsv")]
    return next((f for f in files if f.is_file()), None)  # first of jsonl, csv, tsv


def _read_jsonl(path: Path) -> list[Record]:
    records = []
    with open(path, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: bad JSON ({e.msg})") from e
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object, got {row!r:.40}")
            records.append((line_no, row))
    return records


def _read_table(path: Path) -> list[Record]:
    """CSV via the csv module; TSV split on tabs only (GLUE TSVs hold literal quotes)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        if path.suffix == ".csv":
            reader = csv.reader(f)
            try:
                rows = [(reader.line_num, r) for r in reader if r]
            except csv.Error as e:  # e.g. a field longer than the csv module's limit
                raise ValueError(f"{path}:{reader.line_num}: not valid CSV ({e}); fix the row, "
                                 f"or write the file as JSON lines ({path.stem}.jsonl)") from e
        else:
            rows = [(i, ln.rstrip("\r\n").split("\t")) for i, ln in enumerate(f, 1) if ln.strip()]
    if not rows:
        return []
    header = rows[0][1]
    for line_no, fields in rows[1:]:
        if len(fields) != len(header):
            raise ValueError(f"{path}:{line_no}: {len(fields)} fields, header has {len(header)}")
    return [(line_no, dict(zip(header, fields, strict=True))) for line_no, fields in rows[1:]]


def _read(path: Path) -> list[Record]:
    """The records of one data file; bytes that are not UTF-8 are an error naming the file."""
    try:
        return _read_jsonl(path) if path.suffix == ".jsonl" else _read_table(path)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e.reason}); convert it, e.g. "
                         f"iconv -f latin1 -t utf-8 {path.name}") from e


def _int_like(label: Any) -> int | None:
    """An int label is a JSON integer or a string of decimal digits with an optional minus (as
    read from CSV/TSV)."""
    if isinstance(label, int) and not isinstance(label, bool):
        return label
    return int(label) if isinstance(label, str) and re.fullmatch(r"-?[0-9]+", label) else None


def _infer_label_names(files: list[tuple[Path, list[Record]]]) -> list[str]:
    """Integer labels only: ids 0..max when none is negative, else their values in order.
    Names only: sorted. Both kinds mixed (e.g. 1 and 1.0, or a stray space) is an error."""
    labels = [(f"{path}:{line_no}", row["label"]) for path, records in files
              for line_no, row in records if _valid_label(row.get("label"))]
    ints = {where: _int_like(x) for where, x in labels}
    if all(i is not None for i in ints.values()):
        values = sorted(set(ints.values()))
        if values and values[0] >= 0 and values[-1] >= MAX_LABELS:
            where = next(w for w, i in ints.items() if i == values[-1])
            raise ValueError(f"{where}: integer label {values[-1]} would make {values[-1] + 1} "
                             "classes (integer labels are the ids 0..n-1); number the labels "
                             "0..n-1, or list the names in labels.json")
        return [str(i) for i in (range(values[-1] + 1) if values and values[0] >= 0 else values)]
    name = next((where, x) for where, x in labels if ints[where] is None)
    number = next(((where, x) for where, x in labels if ints[where] is not None), None)
    if number is not None:
        raise ValueError(f"{name[0]}: label {name[1]!r} is not an integer, but {number[0]} gives "
                         f"the integer label {number[1]!r}; give every row the same kind of "
                         "label, or list the names in labels.json")
    return sorted({str(x) for _, x in labels})


def _valid_label(label: Any) -> bool:
    """A string that is not blank or an integer (the rest fails in _label_id, naming the row)."""
    if isinstance(label, str):
        return bool(label.strip())
    return isinstance(label, int) and not isinstance(label, bool)


def _label_id(label: Any, names: list[str], where: str, origin: str, given: bool) -> int:
    """The label's id: its name's position (inferred names: always; labels.json: for string
    labels), else an integer label is the id itself."""
    if not _valid_label(label):
        raise ValueError(f"{where}: label must be a name or an integer, got {label!r}; fill "
                         "it in or drop the row")
    if (isinstance(label, str) or not given) and str(label) in names:
        return names.index(str(label))
    as_int = _int_like(label)
    if as_int is not None and 0 <= as_int < len(names):
        return as_int
    if str(label) in names:  # an integer label that labels.json lists as a name, e.g. "-1"
        return names.index(str(label))
    raise ValueError(f"{where}: label {label!r} is not in the label set {names[:20]} "
                     f"({origin}); fix the row or add the label to labels.json")


# Text fields by name: tadlora's own, then the GLUE / Hugging Face datasets' columns (first pair
# whose two names a row has, else the first single name).
PAIRS = (("text_a", "text_b"), ("sentence1", "sentence2"), ("premise", "hypothesis"),
         ("question1", "question2"), ("question", "sentence"))
SINGLES = ("text_a", "text", "sentence")
FIELDS_HELP = ("name it text_a (or text, sentence) and, for pairs, text_b (or the pairs "
               "sentence1/sentence2, premise/hypothesis, question1/question2, question/sentence)")


def _fields(row: dict[str, Any]) -> tuple[str, ...] | None:
    pair = next((p for p in PAIRS if p[0] in row and p[1] in row), None)
    return pair or next(((k,) for k in SINGLES if k in row), None)


def _text(row: dict[str, Any], key: str, where: str) -> str:
    if not isinstance(row[key], str):
        raise ValueError(f"{where}: field {key!r} must be a string, got {row[key]!r:.40}")
    return row[key]


def _records_to_data(records: list[Record], path: Path, names: list[str],
                     origin: str, given: bool) -> TextData:
    if not records:
        raise ValueError(f"{path}: no examples")
    fields = _fields(records[0][1])  # the first row names the file's fields
    if fields is None:
        raise ValueError(f"{path}:{records[0][0]}: no text field; {FIELDS_HELP}")
    texts, labels = [], []
    for line_no, row in records:
        where = f"{path}:{line_no}"
        if _fields(row) != fields:
            raise ValueError(f"{where}: text fields {_fields(row) or ()} but {fields} on the "
                             "first row; give every row the same ones")
        if "label" not in row:
            raise ValueError(f"{where}: missing field 'label'")
        texts.append([_text(row, k, where) for k in fields])
        labels.append(_label_id(row["label"], names, where, origin, given))
    columns = list(zip(*texts, strict=True))
    return TextData(list(columns[0]), list(columns[1]) if len(fields) == 2 else None,
                    np.asarray(labels, np.int64), names)


def _label_names(directory: Path) -> list[str] | None:
    file = directory / "labels.json"
    if not file.is_file():
        return None
    try:
        names = json.loads(file.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{file}: not a UTF-8 JSON list of label names ({e})") from e
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise ValueError(f"{file}: expected a non-empty JSON list of label strings")
    return names


def load_files(path: str | None, task: str | None, val_size: int,
                seed: int) -> tuple[TextData, TextData]:
    """`path`: dir with train.* and validation.* (jsonl, csv or tsv, first found in that order).

    `task`, if given and a file `{task}.{jsonl,csv,tsv}` exists there, names the validation file
    instead (e.g. task="validation_mismatched" for MNLI); otherwise it is ignored.
    Labels: if labels.json (list of names) exists, id = position, and a row may give the name or
    the id (a JSON integer or a digit string); without it, integer labels are ids as-is and
    string labels are sorted (over train and validation together).
    """
    if path is None or not Path(path).is_dir():
        kind = "is a file, not a directory" if path and Path(path).is_file() else "not found"
        raise FileNotFoundError(f"data directory {kind}: {path!r}; source 'files' needs a "
                                "directory with train.{jsonl,csv,tsv} and validation.{...}")
    directory = Path(path)
    stems = ["train", task if task and _find_split(directory, task) else "validation"]
    files: list[Path] = []
    for stem in stems:
        file = _find_split(directory, stem)
        if file is None:
            raise FileNotFoundError(f"{directory}: no {stem}.jsonl, {stem}.csv or {stem}.tsv")
        files.append(file)
    records = [_read(f) for f in files]
    given = _label_names(directory)
    names = given or _infer_label_names(list(zip(files, records, strict=True)))
    origin = f"{directory / 'labels.json'}" if given else "inferred from train and validation"
    train, val = (_records_to_data(r, f, names, origin, given is not None)
                  for r, f in zip(records, files, strict=True))
    if (train.text_b is None) != (val.text_b is None):
        raise ValueError(f"{directory}: train and validation disagree on having text_b")
    return train, val
