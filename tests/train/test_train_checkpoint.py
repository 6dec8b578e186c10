"""Atomic checkpoint writes, pruning, plain-data encoding and RNG state round trips."""
import random

import numpy as np
import pytest
import torch

from trm_fast.train import run_directory as ckpt


def test_atomic_save_failure_leaves_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "step_00000001.pt"
    ckpt.atomic_torch_save({"value": torch.arange(3)}, path)
    original_bytes = path.read_bytes()

    real_save = torch.save

    def failing_save(obj, stream, *args, **kwargs):
        real_save({"partial": torch.zeros(1000)}, stream)  # some bytes reach the temporary file
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.atomic_torch_save({"value": torch.arange(5)}, path)
    monkeypatch.undo()

    assert path.read_bytes() == original_bytes
    assert torch.equal(torch.load(path)["value"], torch.arange(3))
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary left behind


def test_interrupted_write_never_exposes_partial_file(tmp_path, monkeypatch):
    """Until os.replace runs, the target name still holds the old complete checkpoint."""
    path = tmp_path / "step_00000002.pt"
    ckpt.atomic_torch_save({"value": 1}, path)
    seen = {}
    real_replace = ckpt.os.replace

    def spying_replace(src, dst):
        seen["target_before_replace"] = torch.load(dst)["value"]
        seen["source"] = torch.load(src)["value"]
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", spying_replace)
    ckpt.atomic_torch_save({"value": 2}, path)
    assert seen == {"target_before_replace": 1, "source": 2}
    assert torch.load(path)["value"] == 2


def test_list_latest_and_prune(tmp_path):
    for step in (5, 20, 10, 15):
        ckpt.atomic_torch_save({"step": step}, ckpt.checkpoint_path(tmp_path, step))
    (ckpt.checkpoint_dir(tmp_path) / "notes.txt").write_text("not a checkpoint")
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [5, 10, 15, 20]
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000020.pt"
    ckpt.prune_checkpoints(tmp_path, keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [15, 20]
    assert (ckpt.checkpoint_dir(tmp_path) / "notes.txt").exists()
    assert ckpt.latest_checkpoint(tmp_path / "elsewhere") is None


def test_load_checkpoint_errors_are_one_line(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x02 this is not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match="cannot read") as info:
        ckpt.load_checkpoint(corrupt)
    assert "\n" not in str(info.value)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(2)}, foreign)
    with pytest.raises(ckpt.CheckpointError, match="not a trm-fast training checkpoint"):
        ckpt.load_checkpoint(foreign)


def test_encode_decode_survives_weights_only_load(tmp_path):
    state = {
        "array": np.arange(6, dtype=np.uint32).reshape(2, 3),
        "scalar": np.int64(7),
        "nested": [(1, 2.5, "x"), {"rng": np.random.default_rng(3).bit_generator.state}],
    }
    path = tmp_path / "state.pt"
    ckpt.atomic_torch_save({"state": ckpt.encode(state)}, path)
    loaded = ckpt.decode(torch.load(path, weights_only=True)["state"])
    assert loaded["array"].dtype == np.uint32 and np.array_equal(loaded["array"], state["array"])
    assert loaded["scalar"] == 7
    assert loaded["nested"][0] == (1, 2.5, "x")
    assert loaded["nested"][1]["rng"] == state["nested"][1]["rng"]


def test_rng_state_round_trip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    path = tmp_path / "rng.pt"
    ckpt.atomic_torch_save({"rng": ckpt.rng_state()}, path)
    expected = (random.random(), np.random.rand(), torch.rand(2))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.set_rng_state(torch.load(path, weights_only=True)["rng"])
    again = (random.random(), np.random.rand(), torch.rand(2))
    assert expected[0] == again[0] and expected[1] == again[1] and torch.equal(expected[2], again[2])


def test_first_line_quotes_one_cut_line_of_a_message():
    from trm_fast.errors import first_line

    assert first_line("  shape mismatch\n  at layer 3\n") == "shape mismatch"
    assert first_line("x" * 500) == "x" * 200
    assert first_line("abcdef", limit=3) == "abc"
    assert first_line("") == first_line(" \n ") == ""


def test_both_checkpoint_readers_report_a_corrupt_file_alike(tmp_path):
    """The training checkpoint loader and the evaluation loader share one reader and its error."""
    from trm_fast.model.compat import load_any_state_dict

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x02 " + b"not a checkpoint\n" * 50)
    messages = []
    for load in (ckpt.load_checkpoint, load_any_state_dict):
        with pytest.raises(ckpt.CheckpointError) as info:
            load(corrupt)
        messages.append(str(info.value))
    for message in messages:
        assert message.startswith(f"{corrupt}: cannot read checkpoint (UnpicklingError: ")
        assert "\n" not in message and len(message) <= len(f"{corrupt}: cannot read checkpoint (UnpicklingError: )") + 200
