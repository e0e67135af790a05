"""Checkpoints: atomic safetensors folders, and the slices a resume restores from."""

import json

import pytest
import torch

from tadlora.runs import checkpoint
from tadlora.runs.checkpoint import CheckpointError
from tadlora.runs.rundir import RunDir


def tensors(lo, hi):
    rows = torch.arange(lo, hi, dtype=torch.float32)
    return ({"A/l": rows[:, None, None].expand(-1, 2, 3).clone()},
            {"A/l::exp_avg": rows[:, None, None].expand(-1, 2, 3) * 10, "A/l::step":
             torch.tensor(5.0)})


def test_save_and_read_round_trip_and_replace_atomically(tmp_path):
    t, m = tensors(0, 4)
    d = checkpoint.save(tmp_path / "ck", t, m, {"round": 3, "switch_interval": 2})
    meta, t2, m2 = checkpoint.read(d)
    assert meta.pop("sha256").keys() == {checkpoint.ADAPTERS, checkpoint.OPTIMIZER}
    assert meta == {"round": 3, "switch_interval": 2}
    assert torch.equal(t2["A/l"], t["A/l"]) and torch.equal(m2["A/l::step"], m["A/l::step"])
    checkpoint.save(tmp_path / "ck", t, m, {"round": 4, "switch_interval": 2})
    assert checkpoint.read(d)[0]["round"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no .tmp or .old left


def test_missing_and_corrupt_checkpoints_are_explained(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint in .*`tadlora keep` hold none"):
        checkpoint.read(tmp_path / "none")
    d = checkpoint.save(tmp_path / "ck", *tensors(0, 2), {"round": 1, "switch_interval": None})
    (d / checkpoint.ADAPTERS).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="does not match its sha256"):
        checkpoint.read(d)
    (d / "state.json").write_text(json.dumps({"round": 1}))  # an older checkpoint, no sums
    with pytest.raises(CheckpointError, match="corrupt or incomplete"):
        checkpoint.read(d)


def test_rows_come_from_whichever_slices_of_one_round_hold_them(tmp_path):
    run = RunDir(tmp_path)
    for rank, (lo, hi) in enumerate([(0, 3), (3, 6)]):
        checkpoint.save(run.slice(rank, 4), *tensors(lo, hi),
                        {"round": 4, "switch_interval": 1, "clients": [lo, hi]})
    checkpoint.save(run.slice(0, 6), *tensors(0, 3),
                    {"round": 6, "switch_interval": 1, "clients": [0, 3]})
    parts = checkpoint.slices(run, 6)
    assert sorted(r for r, _, _ in parts) == [4, 4, 6]
    assert checkpoint.cover(parts, 6, range(2, 5)) is None  # round 6: rank 1's slice is missing
    chosen = checkpoint.cover(parts, 4, range(2, 5))
    t, m, meta = checkpoint.read_rows(chosen, range(2, 5), interval=1)
    assert meta["round"] == 4 and meta["clients"][0] <= 2
    assert t["A/l"][:, 0, 0].tolist() == [2.0, 3.0, 4.0]
    assert m["A/l::exp_avg"][:, 0, 0].tolist() == [20.0, 30.0, 40.0]
    assert m["A/l::step"].item() == 5.0
    with pytest.raises(CheckpointError, match="switch interval 1, the config now gives 2"):
        checkpoint.read_rows(chosen, range(2, 5), interval=2)


def test_the_merged_checkpoint_is_a_slice_of_every_client_and_bad_meta_is_named(tmp_path):
    run = RunDir(tmp_path)
    checkpoint.save(run.checkpoint, *tensors(0, 4), {"round": 2, "switch_interval": None})
    assert [(r, c) for r, c, _ in checkpoint.slices(run, 4)] == [(2, range(0, 4))]
    for bad in ({"no_round": 1}, [1], {"round": "3"}, {"round": 2, "clients": [3, 1]}):
        (run.checkpoint / "state.json").write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match="state.json is malformed.*restart the run"):
            checkpoint.slices(run, 4)
        with pytest.raises(CheckpointError, match="state.json is malformed"):
            checkpoint.read(run.checkpoint)
    (run.checkpoint / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="state.json is malformed"):
        checkpoint.slices(run, 4)


def flip_a_byte_of_tensor_data(file):
    """Change one byte inside the tensor data (past safetensors' JSON header)."""
    data = bytearray(file.read_bytes())
    data[-3] ^= 0x40
    file.write_bytes(bytes(data))


def test_flipped_bytes_in_tensor_data_fail_the_checksum(tmp_path):
    d = checkpoint.save(tmp_path / "ck", *tensors(0, 4), {"round": 1, "switch_interval": None})
    from safetensors.torch import load_file
    flip_a_byte_of_tensor_data(d / checkpoint.ADAPTERS)
    load_file(str(d / checkpoint.ADAPTERS))  # safetensors itself does not notice
    with pytest.raises(checkpoint.CorruptCheckpoint, match="adapters.safetensors .*sha256"):
        checkpoint.read(d)


def test_the_previous_checkpoint_is_kept_where_asked(tmp_path):
    run = RunDir(tmp_path)
    for rnd in (1, 2, 3):
        checkpoint.save(run.checkpoint, *tensors(0, 2), {"round": rnd, "switch_interval": None},
                        keep=run.previous)
    assert checkpoint.read(run.checkpoint)[0]["round"] == 3
    assert checkpoint.read(run.previous)[0]["round"] == 2
    assert sorted(r for r, _, _ in checkpoint.slices(run, 2)) == [2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "checkpoint.prev"]


def test_a_corrupt_checkpoint_never_displaces_the_previous_one(tmp_path):
    """A resume fell back to checkpoint.prev (round 1) because checkpoint (round 2) is corrupt:
    the next save drops the corrupt one and keeps round 1 as the fallback."""
    run = RunDir(tmp_path)
    for rnd in (1, 2):
        checkpoint.save(run.checkpoint, *tensors(0, 2), {"round": rnd, "switch_interval": None},
                        keep=run.previous)
    flip_a_byte_of_tensor_data(run.checkpoint / checkpoint.ADAPTERS)
    checkpoint.save(run.checkpoint, *tensors(0, 2), {"round": 2, "switch_interval": None},
                    keep=run.previous)
    assert checkpoint.read(run.previous)[0]["round"] == 1
    assert checkpoint.read(run.checkpoint)[0]["round"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "checkpoint.prev"]


def test_a_state_json_whose_checksums_are_not_an_object_is_named(tmp_path):
    d = checkpoint.save(tmp_path / "ck", *tensors(0, 2), {"round": 1, "switch_interval": None})
    meta = json.loads((d / "state.json").read_text())
    (d / "state.json").write_text(json.dumps({**meta, "sha256": ["x"]}))
    with pytest.raises(CheckpointError, match=r"state.json is malformed \('sha256' must be an "
                                              r"object.*restart the run"):
        checkpoint.read(d)
