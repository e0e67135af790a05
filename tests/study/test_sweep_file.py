"""Sweep files: the grid, includes, run names, and the shipped sweeps."""

from dataclasses import replace
from pathlib import Path

import pytest

from tadlora.runs import config
from tadlora.runs.config import ConfigError
from tadlora.study.sweep_file import load_sweep

REPO = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


GRID = """
[sweep]
name = "g"
out_dir = "out/g"
base = "base.toml"

[base]
"run.rounds" = 7
train = {lr = 5e-3}

[grid]
"method.name" = ["lora", "tad"]
"topology.p" = [0.5, 0.1]
"run.seed" = [0, 1]
"method.switch_interval" = [3, 5]

[[include]]
"topology.kind" = "ring"
"topology.p" = 0.5

[[include]]
"method.name" = ["local", "fedavg"]
"method.switch_interval" = 3
"""


def test_grid_expansion_names_and_includes(tmp_path):
    write(tmp_path / "base.toml", "[train]\nweight_decay = 0.5\n")
    s = load_sweep(write(tmp_path / "g.toml", GRID))
    assert s.name == "g" and s.out_dir == Path("out/g") and s.base == tmp_path / "base.toml"
    names = [n for n, _ in s.runs]
    # 2 x 2 x 2 x 2 grid, ring: 2 methods x 2 seeds x 2 T, references: 2 x 2 p x 2 seeds
    assert len(names) == 16 + 8 + 8 == len(set(names))
    assert names[0] == "lora__er-p0.5__T3__s0"
    assert "tad__ring__T5__s1" in names and "fedavg__er-p0.1__T3__s1" in names
    assert all(n.endswith("__s0") for n in names[:16])  # seed-major
    cfg = config.load(s.base, dict(s.runs)["tad__er-p0.1__T5__s1"])
    assert (cfg.run.rounds, cfg.train.lr, cfg.train.weight_decay) == (7, 5e-3, 0.5)
    assert (cfg.method.name, cfg.topology.p, cfg.method.switch_interval) == ("tad", 0.1, 5)
    assert config.load(s.base, dict(s.runs)["tad__ring__T5__s1"]).topology.kind == "ring"


def test_duplicates_dropped_and_bad_sweeps_rejected(tmp_path):
    dup = '[sweep]\nname="d"\n[grid]\n"run.seed"=[0, 1]\n[[include]]\n"run.seed"=1\n'
    assert [n for n, _ in load_sweep(write(tmp_path / "d.toml", dup)).runs] == ["s0", "s1"]
    one = '[sweep]\nname="o"\n[grid]\n"run.seed"=[3]\n'
    assert [n for n, _ in load_sweep(write(tmp_path / "o.toml", one)).runs] == ["run"]
    ring = ('[sweep]\nname="r"\n[grid]\n"topology.p"=[0.5, 0.1]\n'
            '[[include]]\n"topology.kind"="ring"\n')
    with pytest.raises(ConfigError, match="both be named 'ring'.*topology.p"):
        load_sweep(write(tmp_path / "r.toml", ring))
    with pytest.raises(ConfigError, match="non-empty lists"):
        load_sweep(write(tmp_path / "b.toml", '[sweep]\nname="b"\n[grid]\n"run.seed"=1\n'))
    with pytest.raises(ConfigError, match=r"\[grid\] run.seed lists 1 more than once"):
        load_sweep(write(tmp_path / "t.toml", '[sweep]\nname="t"\n[grid]\n"run.seed"=[1, 0, 1]\n'))
    with pytest.raises(ConfigError, match="unknown config key train.x"):
        load_sweep(write(tmp_path / "k.toml", '[sweep]\nname="k"\n[grid]\n"train.x"=[1]\n'))
    with pytest.raises(ConfigError, match=r"needs \[sweep\] name"):
        load_sweep(write(tmp_path / "n.toml", '[grid]\n"run.seed"=[1]\n'))


def test_shipped_sweep_files_load():
    sizes = {"smoke": 4, "study_rt": 74, "study_mnli": 42, "t_sweep": 45,
             "investigate_rt": 16, "precision_rt": 8}
    for name, size in sizes.items():
        s = load_sweep(REPO / "sweeps" / f"{name}.toml")
        assert (s.name, len(s.runs)) == (name, size)
    mnli = load_sweep(REPO / "sweeps" / "study_mnli.toml")
    cfg = config.load(None, mnli.runs[0][1])
    assert cfg.data.source == "files" and cfg.data.max_length == 128
    for path in sorted((REPO / "sweeps").glob("*.toml")):  # every shipped sweep's every run
        s = load_sweep(path)
        assert s.runs and all(config.load(s.base, o) for _, o in s.runs), path.name


def test_precision_rt_is_study_rt_in_fp32():
    """The matched-seed precision check compares configs equal in everything but precision."""
    def configs(name: str) -> dict[str, config.Config]:
        s = load_sweep(REPO / "sweeps" / f"{name}.toml")
        return {n: config.load(s.base, o) for n, o in s.runs}
    study = {n.replace("__lr0.005", ""): c for n, c in configs("study_rt").items()}
    fp32 = configs("precision_rt")
    for name, cfg in fp32.items():
        assert cfg.train.precision == "fp32"
        bf16 = replace(cfg, train=replace(cfg.train, precision="bf16"))
        assert study[name] == bf16, name


def test_an_empty_grid_is_an_error(tmp_path):
    for text in ('[sweep]\nname = "e"\n', '[sweep]\nname = "e"\n[grid]\n',
                 '[sweep]\nname = "e"\n[base]\n"run.rounds" = 3\n'):
        with pytest.raises(ConfigError, match=r"\[grid\] is empty .*no runs"):
            load_sweep(write(tmp_path / "e.toml", text))
    only_include = '[sweep]\nname = "e"\n[[include]]\n"run.seed" = [0, 1]\n'
    assert len(load_sweep(write(tmp_path / "e.toml", only_include)).runs) == 2


@pytest.mark.parametrize("text, match", [
    ('sweep = 5\n[grid]\n"run.seed" = [0]\n', r"needs \[sweep\] name"),
    ('[sweep]\nname = "s"\nout_dir = 5\n[grid]\n"run.seed" = [0]\n',
     r"\[sweep\] out_dir must be a string"),
    ('[sweep]\nname = "s"\nbase = 5\n[grid]\n"run.seed" = [0]\n', r"\[sweep\] base must be"),
    ('[sweep]\nname = "s"\noutdir = "x"\n[grid]\n"run.seed" = [0]\n',
     r"\[sweep\] has no key 'outdir' \(its keys: name, out_dir, base\)"),
    ('base = "b.toml"\n[sweep]\nname = "s"\n[grid]\n"run.seed" = [0]\n',
     r"base must be a table, \[base\]"),
    ('[sweep]\nname = "s"\n[grid]\n"run.seed" = [0]\n[include]\n"method.name" = "lora"\n',
     r"include must be a list of tables, each written \[\[include\]\]"),
    ('[sweep]\nname = "s"\n[grid]\n"run.seed" = [0]\n[[include]]\n"run.seed" = []\n',
     r"\[\[include\]\] \['run.seed'\] is an empty list"),
    ('[sweep]\nname = "s"\n[grid]\n"run.seed" = [0, 1]\n"run.name" = ["a", "b"]\n',
     r"\['run.name'\] cannot vary: the sweep names each run"),
])
def test_a_sweep_file_of_the_wrong_shape_is_named(tmp_path, text, match):
    """Tables of the wrong kind used to end in a TypeError or AttributeError; a varied run.name
    in 'two runs would both be named' (they differ in [])."""
    with pytest.raises(ConfigError, match=rf"sweep file .*s\.toml: .*{match}"):
        load_sweep(write(tmp_path / "s.toml", text))
