from pathlib import Path

import pytest

from tadlora.runs import config
from tadlora.runs.config import ConfigError

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.toml"))


def test_defaults_are_valid_and_cover_the_required_keys():
    cfg = config.load()
    required = ["run.seed", "run.rounds", "run.eval_every", "run.out_dir", "clients.n",
                "model.path", "model.lora_r", "model.lora_alpha", "model.lora_dropout",
                "model.target_modules", "model.head", "data.source", "data.path", "data.task",
                "data.max_length", "data.partition", "data.alpha", "data.examples_per_client",
                "topology.kind", "topology.p", "topology.path", "method.name",
                "method.switch_interval", "train.local_steps", "train.batch_size", "train.lr",
                "train.precision", "train.device"]
    for key in required:
        section, name = key.split(".")
        assert hasattr(getattr(cfg, section), name), key


def test_overrides_parse_types():
    cfg = config.load(None, ["train.lr=1e-3", "clients.n=4", "method.switch_interval=auto",
                             "model.target_modules=query,key,value", "run.progress=false",
                             "model.lora_alpha=32"])
    assert cfg.train.lr == 1e-3 and cfg.clients.n == 4
    assert cfg.method.switch_interval == "auto" and cfg.run.progress is False
    assert cfg.model.target_modules == ("query", "key", "value")
    assert cfg.model.lora_alpha == 32.0 and isinstance(cfg.model.lora_alpha, float)
    assert config.load(None, ["method.switch_interval=3"]).method.switch_interval == 3


def test_toml_file_then_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[method]\nname = "lora"\n[train]\nlr = 0.002\nlocal_steps = 3\n')
    cfg = config.load(f, ["train.lr=5e-4"])
    assert cfg.method.name == "lora" and cfg.train.local_steps == 3 and cfg.train.lr == 5e-4


def test_a_config_file_with_a_byte_order_mark_loads(tmp_path):
    f = tmp_path / "c.toml"  # as Windows editors save UTF-8
    f.write_bytes(b"\xef\xbb\xbf[train]\nlr = 0.002\n")
    assert config.load(f).train.lr == 0.002


@pytest.mark.parametrize("override, match", [
    (["train.lrr=1"], "unknown config key train.lrr; valid keys of \\[train\\]: local_steps"),
    (["trian.lr=1"], "unknown config section \\[trian\\]; valid: run"),
    (["method.name=foo"], "method.name='foo' is not valid; choose one of lora, ffa, rolora"),
    (["topology.kind=star"], "choose one of er, ring, complete, pairs, file"),
    (["train.precision=fp16"], "choose one of auto, fp32, bf16"),
    (["train.lr=fast"], "train.lr='fast': expected float"),
    (["clients.n=0"], "clients.n=0: must be > 0"),
    (["clients.n=2.5"], "expected int"),
    (["topology.p=1.5"], "topology.p=1.5: must be in"),
    (["method.switch_interval=0"], "integer >= 1, auto or online"),
    (["method.switch_interval=sometimes"], "switch_interval"),
    (["data.source=files"], "needs data.path"),
    (["topology.kind=file"], "needs topology.path"),
    (["trainlr=1"], "section.key=value"),
    (["train.lr=nan"], r"train.lr=nan: expected a finite number"),
    (["topology.p=inf"], r"topology.p=inf: expected a finite number"),
    (["data.alpha=0"], r"data.alpha=0.0: must be > 0"),
    (["model.lora_alpha=-1"], r"model.lora_alpha=-1.0: must be > 0"),
    (["train.lr"], "section.key=value"),
    (["run.seed=-1"], r"run.seed=-1: must be >= 0 and at most 4294967295"),
    (["run.seed=18446744073709551616"], r"run.seed=18446744073709551616: must be >= 0 and at most"),
    (["method.c=0"], r"method.c=0.0: must be > 0"),
    (["clients.n=100000"], r"clients.n=100000: must be > 0 and at most 10000"),
])
def test_bad_values_name_the_key_and_the_choices(override, match):
    with pytest.raises(ConfigError, match=match):
        config.load(None, override)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nlr=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(bad)
    bad.write_bytes(b"\xff\xfe[train]\n")
    with pytest.raises(ConfigError, match=r"bad\.toml is not valid TOML \(UTF-8 text\)"):
        config.load(bad)
    with pytest.raises(ConfigError, match="is a directory"):
        config.load(tmp_path)


def test_resolved_toml_roundtrip(tmp_path):
    cfg = config.load(None, ["method.name=adf", "data.path=a \"q\" dir", "model.head=trained"])
    f = tmp_path / "r.toml"
    f.write_text(config.to_toml(cfg))
    assert config.load(f) == cfg


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads(path):
    """Every config file shipped in configs/ is valid."""
    assert isinstance(config.load(path), config.Config)


def test_configs_are_shipped():
    assert CONFIGS  # the parametrized test above would pass vacuously on a moved folder


def test_online_switch_interval_and_a_topology_schedule_are_valid():
    cfg = config.load(None, ["method.switch_interval=online", "topology.schedule=0:0.5,60:0.02"])
    assert cfg.method.switch_interval == "online" and cfg.topology.schedule == "0:0.5,60:0.02"
    with pytest.raises(ConfigError, match="integer >= 1, auto or online"):
        config.load(None, ["method.switch_interval=sometimes"])
    with pytest.raises(ConfigError, match=r"topology.schedule='0:0.5,x': piece 'x' is not ROUND:P"):
        config.load(None, ["topology.schedule=0:0.5,x"])
    with pytest.raises(ConfigError, match="topology.kind=ring has no edge probability"):
        config.load(None, ["topology.kind=ring", "topology.schedule=0:0.5"])
