"""Numeric precision: auto follows native bf16, bf16 autocast keeps fp32 factors."""

import copy

import numpy as np
import pytest
import torch

from tadlora.core import lora, precision, train
from tests.core.test_train import batch_fn, local, no_dropout_model


def test_bf16_autocast_runs_and_keeps_fp32_factors():
    m = copy.deepcopy(no_dropout_model())
    train.set_trainable(m, ("B",))
    opt = train.make_optimizer(m, 1e-2, 0.0)
    loss = train.local_round(m, opt, batch_fn(), 3, local(1, precision="bf16"))
    assert np.isfinite(loss).all()
    assert all(p.dtype == torch.float32 for p in lora.state(m).values())


def test_precision_auto_follows_native_bf16_and_bf16_without_it_warns(monkeypatch):
    cpu = torch.device("cpu")
    for native, expected in [(True, "bf16"), (False, "fp32")]:
        monkeypatch.setattr(precision, "native_bf16", lambda device, n=native: n)
        assert precision.resolve_precision("auto", cpu) == expected
        assert precision.resolve_precision("fp32", cpu) == "fp32"
    with pytest.warns(RuntimeWarning, match="set train.precision=fp32"):
        assert precision.resolve_precision("bf16", cpu) == "bf16"  # kept: the user asked for it
    assert isinstance(precision.native_bf16(cpu), bool)  # the real check runs on this machine
