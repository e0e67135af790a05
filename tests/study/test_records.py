"""Compact records (`tadlora keep`): small, and the report reads them as it reads the runs."""

import gzip
import json

import pytest

from tadlora.runs import config, loop
from tadlora.runs.health import RunWarning
from tadlora.runs.rundir import CONFIG, METRICS, SUMMARY
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


def test_keep_never_writes_one_run_over_another_of_the_same_name(tmp_path):
    """Two sweeps name their runs from what varies within each, so both can have a
    `tad__lr0.002__s0` (one at p=0.02, one at p=0.5); keeping the second into the first's
    directory used to replace the first's record without a word."""
    from tests.study.conftest import fake_run

    first, second, dest = tmp_path / "sparse", tmp_path / "dense", tmp_path / "records"
    fake_run(first, "tad__lr0.002__s0", ["topology.p=0.02"], 0.70)
    records.keep(first, dest)
    before = (dest / "tad__lr0.002__s0" / SUMMARY).read_text()
    fake_run(second, "tad__lr0.002__s0", ["topology.p=0.5"], 0.85)
    fake_run(second, "lora__lr0.002__s0", ["topology.p=0.5", "method.name=lora"], 0.84)
    with pytest.warns(RunWarning, match=r"not keeping .*dense/tad__lr0.002__s0: the record .* "
                      r"not overwritten: it is another run \(topology.p: 0.02 -> 0.5\); keep "
                      r"these runs into another directory"):
        kept = records.keep(second, dest)
    assert [p.name for p in kept] == ["lora__lr0.002__s0"]  # the others are still kept
    assert (dest / "tad__lr0.002__s0" / SUMMARY).read_text() == before
    # the same run kept again (resumed, or run on another machine) is rewritten
    (first / "tad__lr0.002__s0" / SUMMARY).write_text(json.dumps({"mean": 0.71}))
    assert [p.name for p in records.keep(first, dest)] == ["tad__lr0.002__s0"]
    assert json.loads((dest / "tad__lr0.002__s0" / SUMMARY).read_text())["mean"] == 0.71


def test_a_bundle_keeps_the_runs_already_in_it(tmp_path):
    """Bundling used to rewrite the file from the runs at hand only: the runs of another sweep
    kept there, or of this sweep from a machine whose results/ is gone, were lost."""
    from tests.study.conftest import fake_run

    dest = tmp_path / "kept"
    fake_run(tmp_path / "a", "lora", [], 0.70)
    fake_run(tmp_path / "b", "tad", ["method.name=tad"], 0.75)
    records.bundle(tmp_path / "a", dest)
    path, n = records.bundle(tmp_path / "b", dest)
    assert n == 1
    assert sorted((e["name"], e["summary"]["mean"]) for e in records.read_bundle(path)) == [
        ("lora", 0.70), ("tad", 0.75)]
    fake_run(tmp_path / "c", "lora", ["train.lr=0.01"], 0.10)  # another run of that name
    with pytest.warns(RunWarning, match=r"c/lora: .* lora: it is another run \(train.lr"):
        assert records.bundle(tmp_path / "c", dest)[1] == 0
    assert [e["summary"]["mean"] for e in records.read_bundle(path)] == [0.70, 0.75]
    path.write_bytes(path.read_bytes()[:20])  # a damaged bundle is named and left alone
    with pytest.raises(ValueError, match="runs.jsonl.gz cannot be read .* not overwritten"):
        records.bundle(tmp_path / "a", dest)
    assert len(path.read_bytes()) == 20


def test_keep_exits_1_and_says_so_when_a_run_was_not_kept(tmp_path, capsys):
    from tadlora.cli import main
    from tests.study.conftest import fake_run

    fake_run(tmp_path / "a", "run", [], 0.70)
    fake_run(tmp_path / "b", "run", ["train.lr=0.01"], 0.60)
    assert main(["keep", str(tmp_path / "a"), str(tmp_path / "kept")]) == 0
    assert main(["keep", str(tmp_path / "b"), str(tmp_path / "kept")]) == 1
    err = capsys.readouterr().err
    assert "warning: not keeping" in err and "1 finished runs not kept" in err


def test_a_bundle_entry_whose_config_is_not_toml_is_named_and_skipped(tmp_path, capsys):
    from tests.study.conftest import fake_run

    fake_run(tmp_path / "a", "lora", [], 0.70)
    path, _ = records.bundle(tmp_path / "a", tmp_path / "kept")
    [entry] = records.read_bundle(path)
    with pytest.raises(config.ConfigError, match="the config of x is not valid TOML"):
        records.config_of("[run\nseed = 0", "the config of x")
    assert records.config_of(entry["config"]) == config.load(tmp_path / "a" / "lora" / CONFIG)
    broken = tmp_path / "broken"
    broken.mkdir()
    with gzip.open(broken / records.BUNDLE, "wt") as f:
        f.write(json.dumps({**entry, "config": "[run\nseed = 0"}) + "\n")
        f.write(json.dumps(entry) + "\n")
    assert [r["name"] for r in results.collect(broken)] == ["lora"]  # the good entry stays
    err = capsys.readouterr().err
    assert "the config of lora in" in err and "entry 1 of" in err
