"""Run directories as runs.loop writes them, with made-up numbers, for the study's tests."""

import json
from pathlib import Path

import pytest

from tadlora.runs import config


def fake_run(root: Path, name: str, overrides: list[str], final: float | None,
             rho: float | None = None, rounds: int = 4, precision: str = "fp32",
             inputs: dict | None = None) -> Path:
    """A run directory as runs.loop writes it, with made-up numbers (final=None: unfinished;
    `precision`: the one train.precision resolved to; `inputs`: the files' digests, if any)."""
    cfg = config.load(None, [f"run.rounds={rounds}", "run.eval_every=2", *overrides])
    d = root / name
    d.mkdir(parents=True)
    (d / "config.toml").write_text(config.to_toml(cfg))
    rows = []
    for t in range(rounds if final is not None else rounds // 2):
        r = {"round": t, "phase": "B", "switch_interval": None, "train_loss": 0.5,
             "consensus_A": 0.1, "consensus_B": 0.1, "cross_term_error": 0.1 * (t + 1),
             "bytes_sent": [0]}
        if (t + 1) % 2 == 0:
            acc = (final or 0.5) * (t + 1) / rounds
            r["eval"] = {"client_acc": [acc], "mean": acc, "std": 0.0, "min": acc, "max": acc,
                         "averaged_adapter_acc": acc}
        rows.append(r)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if final is not None:
        T = cfg.method.switch_interval if cfg.method.name == "tad" else None
        (d / "summary.json").write_text(json.dumps(
            {"mean": final, "rho": rho, "switch_interval": 3 if T == "auto" else T,
             "wall_time_s": 60.0, "machine": "Test CPU (2 cores)", "precision": precision,
             **({"inputs": inputs} if inputs is not None else {})}))
    return d


ACC = {  # (method, lr, p) -> final accuracy of seeds 0, 1, 2
    ("lora", 0.002, 0.5): [0.80, 0.82, 0.84], ("lora", 0.002, 0.1): [0.70, 0.71, 0.75],
    ("lora", 0.005, 0.5): [0.60, 0.61, 0.62], ("lora", 0.005, 0.1): [0.90, 0.91, 0.92],
    ("tad", 0.002, 0.5): [0.81, 0.80, 0.79], ("tad", 0.002, 0.1): [0.78, 0.77, 0.76],
    ("tad", 0.005, 0.5): [0.50, 0.52, 0.54], ("tad", 0.005, 0.1): [0.60, 0.61, 0.62],
}


@pytest.fixture
def study(tmp_path) -> Path:
    root = tmp_path / "runs"
    for (m, lr, p), accs in ACC.items():
        for seed, acc in enumerate(accs):
            fake_run(root, f"{m}_{lr}_{p}_{seed}", [f"method.name={m}", f"train.lr={lr}",
                                                    f"topology.p={p}", f"run.seed={seed}"], acc)
    for seed, acc in enumerate([0.70, 0.72]):
        fake_run(root, f"ring_{seed}", ["method.name=lora", "train.lr=0.002", f"run.seed={seed}",
                                        'topology.kind="ring"'], acc)
        fake_run(root, f"local_{seed}", ["method.name=local", "train.lr=0.002",
                                         f"run.seed={seed}"], acc - 0.1)
    fake_run(root, "sub/unfinished", ["method.name=lora", "train.lr=0.002", "run.seed=5"], None)
    return root


T_BEST = {0.5: 1, 0.1: 3, 0.02: 5}  # p -> the switching interval with the best accuracy


@pytest.fixture
def t_sweep(tmp_path) -> Path:
    """A T sweep of tad over three connectivities, two seeds each, plus one auto run each."""
    root = tmp_path / "t"
    for p, t_best in T_BEST.items():
        for T in [1, 3, 5, 10]:
            for seed in range(2):
                acc = 0.8 - 0.01 * abs(T - t_best) + 0.001 * seed
                fake_run(root, f"{p}_{T}_{seed}", ["method.name=tad", f"topology.p={p}",
                                                   f"method.switch_interval={T}",
                                                   f"run.seed={seed}", "topology.rho_samples=300"],
                         acc)
        fake_run(root, f"{p}_auto", ["method.name=tad", f"topology.p={p}",
                                     "topology.rho_samples=300"], 0.79, rho=0.5)
    return root
