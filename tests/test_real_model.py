"""One short real run: the packaged MiniLM truncated to 2 layers clearly learns the packaged
Rotten Tomatoes sentences (chance is 0.5)."""

import pytest

from tadlora.runs import config, loop
from tadlora.runs.rundir import RunDir


@pytest.mark.slow
def test_two_layer_minilm_learns(tmp_path):
    cfg = config.load(None, [
        f"run.out_dir={tmp_path}", "run.name=real", "run.rounds=14", "run.eval_every=0",
        "run.progress=false", "model.num_layers=2", "clients.n=4", "data.partition=iid",
        "data.examples_per_client=160", "data.val_size=300", "train.local_steps=4",
        "train.lr=1e-2", "train.lr_schedule=constant", "train.precision=fp32",
        "model.head=trained", "method.name=lora", "topology.kind=complete"])
    _, summary = loop.run(cfg)
    rows = RunDir(tmp_path / "real").records()
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.03
    assert summary["mean"] >= 0.65, summary
