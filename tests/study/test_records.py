"""Compact records (`tadlora keep`): small, and the report reads them as it reads the runs."""

import json

import pytest

from tadlora.runs import config, loop
from tadlora.runs.health import RunWarning
from tadlora.runs.rundir import METRICS, SUMMARY
from tadlora.study import records, results
from tests.conftest import tiny_run_args


def assert_same_runs(small: list[dict], full: list[dict], *fields: str) -> None:
    """The report's rows of the records equal those of the runs in `fields` and in the rounds
    of the cross-term error, whose values the slim rounds keep to 5 significant digits
    (compared with a tolerance: 4-digit strings of 0.051965 and 0.0519649 differ)."""
    def key(r):
        return tuple(r[f] for f in fields), [t for t, _ in r["cross"]]

    assert sorted(map(key, small)) == sorted(map(key, full))
    for a, b in zip(sorted(small, key=key), sorted(full, key=key), strict=True):
        assert [c for _, c in a["cross"]] == pytest.approx([c for _, c in b["cross"]], rel=1e-4)


def test_records_are_small_and_report_the_same_numbers(tiny_model_dir, tmp_path):
    runs = tmp_path / "runs"
    for method in ("lora", "tad"):
        loop.run(config.load(None, tiny_run_args(tiny_model_dir, runs, method,
                                                 f"method.name={method}", "run.rounds=6")))
    (runs / "unfinished").mkdir()
    (runs / "unfinished" / "config.toml").write_text((runs / "lora" / "config.toml").read_text())
    kept = records.keep(runs, tmp_path / "records")
    assert sorted(p.name for p in kept) == ["lora", "tad"]  # finished runs only
    full, small = results.collect(runs), results.collect(tmp_path / "records")
    assert_same_runs(small, [r for r in full if r["finished"]], "method", "final", "evals")
    for d in kept:
        lines = [json.loads(x) for x in (d / METRICS).read_text().splitlines()]
        assert len(lines) == 6 and all("eval" in r or set(r) <= set(records.SLIM) for r in lines)
        assert json.loads((d / SUMMARY).read_text()) == json.loads(
            (runs / d.name / SUMMARY).read_text())
        assert (d / METRICS).stat().st_size < (runs / d.name / METRICS).stat().st_size


def test_keep_passes_over_a_damaged_run_with_a_warning_and_keeps_the_rest(tiny_model_dir,
                                                                          tmp_path):
    runs = tmp_path / "runs"
    for name in ("good", "bad"):
        loop.run(config.load(None, tiny_run_args(tiny_model_dir, runs, name)))
    with (runs / "bad" / METRICS).open("a") as log:
        log.write("garbage\n")
    with pytest.warns(RunWarning, match=r"skipping .*bad: .*metrics.jsonl, line 5"):
        kept = records.keep(runs, tmp_path / "records")
    assert [p.name for p in kept] == ["good"]


def test_a_bundle_holds_a_sweep_in_one_file_and_reports_the_same_numbers(tiny_model_dir,
                                                                         tmp_path, capsys):
    runs = tmp_path / "runs"
    for method in ("lora", "tad"):
        loop.run(config.load(None, tiny_run_args(tiny_model_dir, runs / "sweep", method,
                                                 f"method.name={method}", "run.rounds=4")))
    path, n = records.bundle(runs, tmp_path / "kept")
    assert n == 2 and path.name == records.BUNDLE
    first = path.read_bytes()
    assert records.bundle(runs, tmp_path / "kept")[0].read_bytes() == first  # deterministic
    assert len(first) < sum(f.stat().st_size for f in runs.rglob("*.jsonl")) / 2
    full, small = results.collect(runs), results.collect(tmp_path / "kept")
    assert_same_runs(small, full, "name", "method", "final", "T", "machine", "evals")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / records.BUNDLE).write_bytes(first[:len(first) // 2])
    assert results.collect(tmp_path / "bad") == []
    assert "skipping" in capsys.readouterr().err


def test_keep_names_a_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory of runs"):
        records.keep(tmp_path / "nothing", tmp_path / "out")
    (tmp_path / "runs").mkdir()
    (tmp_path / "a-file").write_text("")
    with pytest.raises(FileExistsError, match="a-file is a file; give a directory"):
        records.keep(tmp_path / "runs", tmp_path / "a-file")


def test_keep_into_the_runs_directory_itself_or_a_bundle_onto_a_file_is_named(tmp_path):
    """Keeping RUNS_DIR into itself used to end in shutil's "... are the same file", a bundle
    onto a file in "[Errno 17] File exists"."""
    from tests.study.conftest import fake_run

    runs = tmp_path / "runs"
    before = (fake_run(runs, "a", [], 0.8) / METRICS).read_text()
    with pytest.raises(ValueError, match="is the directory of the runs itself; give another"):
        records.keep(runs, tmp_path / "runs" / ".." / "runs")
    (tmp_path / "a-file").write_text("")
    with pytest.raises(FileExistsError, match="a-file is a file; give a directory"):
        records.bundle(runs, tmp_path / "a-file")
    assert (runs / "a" / METRICS).read_text() == before  # the run is as it was
