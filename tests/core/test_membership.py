"""Departed clients (core/membership.py): out of W, frozen, named in the records, resumable."""

import json

import numpy as np
import pytest
import torch

from tadlora.core import lora, membership
from tadlora.core.membership import Change
from tadlora.engines import local
from tadlora.runs import config, loop
from tadlora.runs.build import build
from tadlora.runs.checkpoint import CheckpointError
from tadlora.runs.health import RunWarning
from tests.conftest import tiny_run_args


def test_departed_clients_leave_w_and_the_rows_are_renormalised():
    w = np.array([[.5, .5, 0, 0], [.25, .25, .25, .25], [0, .5, .5, 0], [0, .5, 0, .5]])
    out = membership.without(w, frozenset({1}))
    assert np.allclose(out.sum(1), 1)
    assert (out[:, 1] == [0, 1, 0, 0]).all() and (out[1] == [0, 1, 0, 0]).all()
    assert np.allclose(out[0], [1, 0, 0, 0])  # its only neighbour left: keeps its own value
    assert np.allclose(out[2], [0, 0, 1, 0]) and np.allclose(out[3], [0, 0, 0, 1])
    assert membership.without(w, frozenset()) is w


def test_departures_are_events_by_round():
    events = membership.changed((), 3, Change(depart=(4, 2)), 6)
    assert events == ((3, (2, 4)),)
    assert membership.departed(events, 2) == frozenset()
    assert membership.departed(events, 3) == membership.departed(events, 9) == {2, 4}
    events = membership.changed(events, 5, Change(depart=(0,)), 6)
    assert membership.departed(events, 6) == {0, 2, 4}
    back = membership.changed(events, 7, Change(rejoin=True), 6)
    assert membership.departed(back, 7) == frozenset() and membership.departed(back, 5) == {
        0, 2, 4}
    assert membership.changed(events, 4, Change(), 6) == ((3, (2, 4)),)  # later ones rerun
    assert membership.changed(events, 4, Change(), 6) == membership.changed(events, 4,
                                                                             Change(), 6)
    with pytest.raises(ValueError, match="outside|0..5"):
        membership.changed((), 0, Change(depart=(6,)), 6)
    with pytest.raises(ValueError, match="every client"):
        membership.changed((), 0, Change(depart=(0, 1)), 2)
    assert membership.from_json(membership.to_json(back), 6) == back
    for bad in ([[1, [9]]], [["x", [1]]], [[1]]):
        with pytest.raises(ValueError):
            membership.from_json(bad, 6)


def test_a_departed_client_does_not_change_and_takes_no_part(tiny_model_dir, tmp_path):
    """In the simulator, a client departed from round 0 keeps its tensors and AdamW moments
    bit for bit (optimizer_state=keep), is named in the records, has no loss, and is kept
    out of the aggregates and of the averaged adapter."""
    cfg = config.load(None, tiny_run_args(tiny_model_dir, tmp_path, "d", "method.name=tad",
                                          "method.switch_interval=1",
                                          "train.optimizer_state=keep"))
    exp = build(cfg)
    fed = exp.fed
    local.run_round(fed, 0)  # moments exist for client 1 before it departs
    fed.departures = ((1, (1,)),)
    before = {k: v.detach()[1].clone() for k, v in lora.state(fed.model).items()}
    moments = {k: v[1].clone() for k, v in fed.state()[1].items() if v.dim()}
    for t in (1, 2):
        rec = local.run_round(fed, t)
        assert rec["departed"] == [1] and rec["client_loss"][1] is None
        assert rec["train_loss"] == pytest.approx(np.mean([x for x in rec["client_loss"]
                                                           if x is not None]), abs=1e-5)
    after = lora.state(fed.model)
    assert all(torch.equal(after[k][1], v) for k, v in before.items())
    assert all(torch.equal(fed.state()[1][k][1], v) for k, v in moments.items())
    assert not torch.equal(after["A/" + next(iter(lora.factors(fed.model)["A"]))][0],
                           before["A/" + next(iter(lora.factors(fed.model)["A"]))])
    ev = local.evaluation(fed, exp.val, 2)
    here = [a for c, a in enumerate(ev["client_acc"]) if c != 1]
    assert ev["departed"] == [1] and ev["mean"] == pytest.approx(np.mean(here))


def test_departures_survive_a_resume_and_a_bad_one_is_named(tiny_model_dir, tmp_path):
    """The departures are saved with the checkpoint: `tadlora run --resume` goes on without
    the departed clients; a state.json whose departures name no client is a clear error."""
    cfg = config.load(None, tiny_run_args(tiny_model_dir, tmp_path, "r", "run.rounds=2"))
    exp = build(cfg)
    run = loop.RunDir.create(cfg)
    engine = local.LocalEngine(exp.fed, exp.val)
    exp.fed.departures = ((1, (2,)),)
    loop.execute(engine, exp, run, resume=False)
    run.unlock()
    meta = json.loads((run.checkpoint / "state.json").read_text())
    assert meta["departures"] == [[1, [2]]]
    _, summary = loop.resume(run.path, ["run.rounds=3"])
    assert summary["departed"] == [2]
    assert [r.get("departed") for r in run.records()] == [None, [2], [2]]
    meta["departures"] = [[1, [7]]]
    (run.checkpoint / "state.json").write_text(json.dumps(meta))
    with pytest.warns(RunWarning, match="falling back"), pytest.raises(
            CheckpointError, match="state.json|checkpoint|clients outside"):
        loop.resume(run.path, ["run.rounds=4"])  # the edited state.json fails its sha256
