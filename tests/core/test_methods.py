from dataclasses import dataclass

import numpy as np
import pytest

from tadlora.core import methods

A, B, AB, NONE = frozenset("A"), frozenset("B"), frozenset("AB"), frozenset()


def schedule(name, rounds=8, fixed=None, auto=3):
    pol = methods.make(name, fixed, lambda: auto)
    return [(pol.trainable(t), pol.mixed(t)) for t in range(rounds)]


def test_lora_trains_and_mixes_both():
    assert schedule("lora") == [(AB, AB)] * 8


def test_ffa_trains_and_mixes_b_only():
    assert schedule("ffa") == [(B, B)] * 8


def test_rolora_alternates_every_round_and_mixes_the_active_factor():
    assert schedule("rolora", 4) == [(B, B), (A, A), (B, B), (A, A)]


def test_adf_switches_every_5_rounds_mixing_both():
    s = schedule("adf", 12)
    assert [t for t, _ in s] == [B] * 5 + [A] * 5 + [B] * 2
    assert all(m == AB for _, m in s)


def test_tad_fixed_and_auto_interval():
    fixed = schedule("tad", 6, fixed=2)
    assert [t for t, _ in fixed] == [B, B, A, A, B, B] and all(m == AB for _, m in fixed)
    auto = schedule("tad", 7, auto=3)
    assert [t for t, _ in auto] == [B, B, B, A, A, A, B]
    assert methods.make("tad", None, lambda: 4).interval == 4


def test_auto_is_only_computed_when_needed():
    def boom():
        raise AssertionError("rho should not be computed")
    for name in ["lora", "ffa", "rolora", "local", "fedavg"]:
        methods.make(name, None, boom)
    methods.make("tad", 2, boom)
    assert methods.make("adf", None, boom).interval == 5


def test_local_mixes_nothing_and_fedavg_uses_uniform_weights():
    assert schedule("local", 3) == [(AB, NONE)] * 3
    w = np.eye(4)
    assert np.allclose(methods.make("fedavg", None, lambda: 1).weights(w), np.full((4, 4), 0.25))
    assert methods.make("lora", None, lambda: 1).weights(w) is w


def test_unknown_method_lists_valid_names():
    with pytest.raises(ValueError, match=f"valid: {', '.join(methods.METHODS)}$"):
        methods.make("dora", None, lambda: 1)
    paper = ["lora", "ffa", "rolora", "adf", "tad", "local", "fedavg"]  # the tables' order
    assert [m for m in methods.METHODS if m in paper] == paper


# --- the topology-aware switching interval --------------------------------------------------


@pytest.mark.parametrize(
    "rho,c,expected",
    [
        (0.0, 1.0, 1),
        (0.75, 1.0, 2),
        (0.96, 1.0, 5),
        (0.99, 1.0, 10),
        (0.91, 3.0, 10),
        (0.5, 0.1, 1),
    ],
)
def test_switch_interval(rho: float, c: float, expected: int) -> None:
    assert methods.switch_interval(rho, c) == expected


def test_switch_interval_grows_as_connectivity_weakens() -> None:
    rhos = [0.15, 0.43, 0.64, 0.79, 0.91, 0.95]
    intervals = [methods.switch_interval(rho, 2.0) for rho in rhos]
    assert intervals == sorted(intervals) and intervals[-1] > intervals[0]


@pytest.mark.parametrize("rho", [1.0, 1.2])
def test_switch_interval_rejects_never_mixing(rho: float) -> None:
    with pytest.raises(ValueError, match="never mixes"):
        methods.switch_interval(rho, 1.0)


def test_switch_interval_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="c > 0"):
        methods.switch_interval(0.5, 0.0)


def test_default_c() -> None:
    assert methods.DEFAULT_C == 1.0


# --- a method added in one line -----------------------------------------------------------------


@dataclass(frozen=True)
class TrainsB(methods.Joint):
    """A toy method: only B trains, A and B are mixed every round."""

    name: str = "aa_trains_b"  # sorts before lora by name, after it in the registry

    def trainable(self, t: int) -> frozenset[str]:
        return B


def test_a_registered_method_runs_end_to_end(tiny_model_dir, tmp_path, monkeypatch):
    """One policy class and one registry line: the config accepts it, the sweep names its
    runs, runs.loop trains it, and the report lists it in registry order, paired with lora."""
    from safetensors.torch import load_file

    from tadlora.runs import config
    from tadlora.runs.build import build
    from tadlora.runs.rundir import RunDir
    from tadlora.study import report, sweep
    from tadlora.study.sweep_file import load_sweep
    from tests.study.test_sweep import tiny_overrides

    monkeypatch.setitem(methods.METHODS, "aa_trains_b", lambda fixed, auto: TrainsB())
    assert config.load(None, ["method.name=aa_trains_b"]).method.name == "aa_trains_b"
    with pytest.raises(config.ConfigError, match="choose one of lora, .*, aa_trains_b"):
        config.load(None, ["method.name=nope"])
    f = tmp_path / "toy.toml"
    f.write_text('[sweep]\nname="toy"\n[grid]\n"method.name"=["aa_trains_b", "lora"]\n')
    s = load_sweep(f)
    assert [name for name, _ in s.runs] == ["aa_trains_b", "lora"]
    out = tmp_path / "runs"
    over = tiny_overrides(tiny_model_dir, out)
    assert sweep.run_sweep(s, 1, over)["done"] == 2  # each through runs.loop.run

    rows = RunDir(out / "aa_trains_b").records()
    assert [r["phase"] for r in rows] == ["B"] * 3 and all(r["consensus_A"] < 1e-6 for r in rows)
    final = load_file(str(out / "aa_trains_b" / "checkpoint" / "adapters.safetensors"))
    start = build(config.load(None, [*over, "method.name=aa_trains_b"])).fed.state()[0]
    for k, v in final.items():  # A stays at its common initialisation; B trained
        assert (v - start[k]).abs().max() <= 1e-6 if k.startswith("A/") else v.abs().sum() > 0

    text = report.write_report(out, tmp_path / "rep").read_text()
    table = [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| ")]
    assert table.index("| lora") < table.index("| aa_trains_b")  # registry order, twice:
    assert table.count("| aa_trains_b") == 2  # the accuracy table, and paired with lora


def test_a_phase_schedule_continues_the_phase_index_across_a_change_of_t():
    sched = methods.PhaseSchedule([(0, 2), (5, 3)])
    # T = 2: rounds 0-1 phase 0, 2-3 phase 1, 4 phase 2; from round 5 (index 5 // 2 = 2) T = 3
    assert [sched.index(t) for t in range(12)] == [0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3, 4]
    assert [sched.interval(t) for t in (0, 4, 5, 100)] == [2, 2, 3, 3]
    pol = methods.Alternating(name="tad", interval=2, schedule=sched)
    assert [pol.phase(t) for t in range(8)] == ["B", "B", "A", "A", "B", "B", "B", "B"]
    assert pol.interval_at(4) == 2 and pol.interval_at(5) == 3
    sched.set_from(8, 3)  # no change: no segment
    sched.set_from(8, 1)
    assert sched.segments == [(0, 2), (5, 3), (8, 1)]
    sched.set_from(6, 3)  # a decision replaces the future
    assert sched.segments == [(0, 2), (5, 3)]
    sched.reset()
    assert sched.segments == [(0, 2), (5, 3)]
    with pytest.raises(ValueError, match="round 0"):
        methods.PhaseSchedule([(3, 2)])


def test_online_interval_is_from_the_topology_for_tad_only():
    assert methods.uses_auto_interval("tad", "online")
    assert not methods.uses_auto_interval("adf", "online")
