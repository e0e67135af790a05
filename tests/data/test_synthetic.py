"""The testbed task: teachers, samples, the exact objective, and runs through the real engines."""

import json

import numpy as np
import pytest
import torch

from tadlora.core import federation, lora, methods
from tadlora.core.evaluate import scores
from tadlora.data import synthetic
from tadlora.data.partition import label_skew_proportions
from tadlora.engines import local
from tadlora.runs import build, config, loop

SMALL = ["data.source=synthetic", "clients.n=4", "data.examples_per_client=64",
         "synthetic.dim=8", "synthetic.hidden=8", "synthetic.classes=3",
         "synthetic.val_per_client=50", "model.lora_r=2", "model.lora_alpha=4",
         "model.lora_dropout=0", "train.local_steps=2", "train.batch_size=4",
         "train.precision=fp32", "run.rounds=4", "run.eval_every=2", "run.progress=false",
         "topology.rho_samples=100", "train.lr=1e-2"]


def small(tmp_path, name, *extra):
    return config.load(None, [*SMALL, f"run.out_dir={tmp_path}", f"run.name={name}", *extra])


def test_task_depends_on_the_task_seed_only_and_heterogeneity_scales_the_deltas():
    spec = synthetic.TaskSpec(dim=6, hidden=5, classes=3, rank=1, heterogeneity=0.0)
    a, b = synthetic.make_task(spec, 3), synthetic.make_task(spec, 3)
    pairs = zip(a.teachers, b.teachers, strict=True)
    assert all(np.array_equal(x[k], y[k]) for x, y in pairs for k in x)
    same = [t["query"] for t in a.teachers]
    assert all(np.array_equal(same[0], q) for q in same)  # heterogeneity 0: one teacher
    het = synthetic.make_task(synthetic.TaskSpec(dim=6, hidden=5, classes=3, rank=1,
                                                 heterogeneity=1.0), 3)
    d = het.teachers[1]["value"] - het.teachers[0]["value"]
    assert np.linalg.matrix_rank(d) <= 2 and np.linalg.norm(d) > 0  # two rank-1 deltas
    other = synthetic.make_task(synthetic.TaskSpec(dim=6, hidden=5, classes=3, rank=1,
                                                   task_seed=1), 3)
    assert not np.array_equal(other.base["query"], a.base["query"])


def test_samples_follow_the_label_skew_and_their_teacher():
    spec = synthetic.TaskSpec(dim=8, hidden=8, classes=3, val_per_client=30)
    task = synthetic.make_task(spec, 4)
    props = synthetic.class_proportions("label_skew", 4, 3, 0, 0.5)
    data = synthetic.split(task, props, 60, seed=5)
    for i in range(4):
        want = synthetic.counts_for(label_skew_proportions(4, 3)[i], None, 60)
        assert np.bincount(data.y[i].numpy(), minlength=3).tolist() == want.tolist()
        brute = task.logits(i, data.x[i].double().numpy()).argmax(1)  # float32 inputs
        assert np.array_equal(brute, data.y[i].numpy())
    assert data.val_x.shape == (4 * 30, 8)
    again = synthetic.split(task, props, 60, seed=6)
    assert torch.equal(again.val_x, data.val_x)  # validation: the task's, not the run's
    assert not torch.equal(again.x, data.x)


def test_a_teacher_that_never_gives_a_class_is_explained():
    task = synthetic.make_task(synthetic.TaskSpec(dim=4, hidden=4, classes=3), 1)
    with pytest.raises(ValueError, match="too rarely"):
        synthetic.draw(task, 0, np.array([0, 0, 10 ** 6]), np.random.default_rng(0), tries=2)


def test_objective_equals_a_brute_force_computation(tmp_path):
    exp = build.build(small(tmp_path, "x", "model.head=frozen"))
    fed = exp.fed
    with torch.no_grad():  # give every client its own nonzero adapter
        for p in lora.state(fed.model).values():
            p.copy_(torch.randn_like(p) * 0.3)
    acc, loss = scores(fed.model, exp.val, 4, "fp32", torch.device("cpu"))
    x, y = exp.val.inputs["x"].double(), exp.val.labels
    fac, scale = lora.factors(fed.model), 4 / 2
    base = {n: getattr(fed.model, n) for n in ("query", "value")}
    w_c = fed.model.classifier.weight.double()
    for i in range(4):
        h = x
        for name in ("query", "value"):
            w = base[name].base.weight.double() + scale * (
                fac["B"][name].double()[i] @ fac["A"][name].double()[i])
            h = torch.tanh(h @ w.T)
        logits = h @ w_c.T
        assert acc[i] == pytest.approx((logits.argmax(1) == y).double().mean().item(), abs=1e-6)
        ce = torch.nn.functional.cross_entropy(logits, y).item()
        assert loss[i] == pytest.approx(ce, rel=1e-5)


@pytest.mark.parametrize("name", list(methods.METHODS))
def test_each_method_obeys_its_policy_on_the_testbed(tmp_path, name):
    exp = build.build(small(tmp_path, name, f"method.name={name}", "topology.kind=complete",
                            "method.switch_interval=1"))
    fed = exp.fed
    for t in range(3):
        before = {k: {n: p.detach().clone() for n, p in ps.items()}
                  for k, ps in lora.factors(fed.model).items()}
        federation.prepare_round(fed, t)
        federation.local_training(fed, t)
        moved = {k for k, ps in lora.factors(fed.model).items()
                 if any(not torch.equal(p, before[k][n]) for n, p in ps.items())}
        assert moved == set(fed.policy.trainable(t)), (t, moved)
        trained = {k: {n: p.detach().clone() for n, p in ps.items()}
                   for k, ps in lora.factors(fed.model).items()}
        rec = local.mix_and_measure(fed.model, fed.policy, fed.weights(t), t)
        fac = lora.factors(fed.model)
        for kind in ("A", "B"):  # the complete graph averages exactly: mixed = in consensus
            if kind in fed.policy.mixed(t):
                assert rec[f"consensus_{kind}"] < 1e-6, (t, kind)
            else:
                assert all(torch.equal(p, trained[kind][n]) for n, p in fac[kind].items())


def test_testbed_runs_are_deterministic_and_resume_exactly(tmp_path, monkeypatch):
    _, first = loop.run(small(tmp_path, "a", "method.name=tad"))
    _, again = loop.run(small(tmp_path, "b", "method.name=tad"))
    rows = [[json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
            for d in ("a", "b")]
    assert rows[0] == rows[1] and first["client_acc"] == again["client_acc"]
    real = local.LocalEngine.round

    def crash(self, t):
        if t == 3:
            raise KeyboardInterrupt
        return real(self, t)

    monkeypatch.setattr(local.LocalEngine, "round", crash)
    with pytest.raises(KeyboardInterrupt):
        loop.run(small(tmp_path, "c", "method.name=tad"))
    monkeypatch.setattr(local.LocalEngine, "round", real)
    _, resumed = loop.resume(tmp_path / "c")
    cut = [json.loads(x) for x in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    assert cut == rows[0] and resumed["client_acc"] == first["client_acc"]


def test_synthetic_is_not_a_text_source():
    from tadlora.data import sources

    with pytest.raises(ValueError, match="generated task"):
        sources.load_source("synthetic")
