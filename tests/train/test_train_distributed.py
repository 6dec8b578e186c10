"""Data parallelism on CPU: 2 processes with gloo end with identical weights, equal (within float
reordering) to one process on the same global batch."""
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from trm_fast import config as config_lib


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank, world_size, port, cfg_dict, run_dir, out_dir):
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    from trm_fast.train.loop import Trainer

    trainer = Trainer(config_lib.from_dict(cfg_dict), run_dir, progress=False, log=lambda _line: None)
    try:
        result = trainer.run()
        torch.save(
            {"model": trainer.model.state_dict(), "ema": trainer.ema.state_dict()["shadow"], "step": result.step,
             "model_config": trainer.model.config.to_dict(),
             "final_eval": result.final_eval},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        trainer.close()


@pytest.mark.slow
def test_two_gloo_processes_match_each_other_and_one_process(tiny_config, tmp_path, monkeypatch):
    # No exploration: its random draws are per rank, so they would differ from one process's.
    cfg = tiny_config("max_steps=5", "model.halt_exploration_prob=0.0", "log_interval=1")
    cfg_dict = config_lib.to_dict(cfg)
    mp.spawn(_worker, args=(2, _free_port(), cfg_dict, str(tmp_path / "ddp"), str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")
    assert rank0["step"] == rank1["step"] == 5
    for key in rank0["model"]:
        assert torch.equal(rank0["model"][key], rank1["model"][key]), key
    for key in rank0["ema"]:
        assert torch.equal(rank0["ema"][key], rank1["ema"][key]), key
    assert rank0["final_eval"] == rank1["final_eval"]  # metrics are reduced over both ranks
    assert rank0["final_eval"]["test/count"] == 12

    monkeypatch.setattr(os, "environ", dict(os.environ))  # the in-process run below sets RANK etc.
    _worker(0, 1, _free_port(), cfg_dict, str(tmp_path / "single"), str(tmp_path / "single"))
    single = torch.load(tmp_path / "single" / "rank0.pt")
    for key, value in single["model"].items():
        # Only the order of the gradient sums differs (measured: ~1e-7 after 5 steps).
        assert torch.allclose(value, rank0["model"][key], rtol=0, atol=1e-5), key
    # ... and training really moved them (5 steps of ~lr each), so the comparison means something
    from trm_fast.model.reference import TRM, TRMConfig

    torch.manual_seed(cfg.seed)  # the trainer's initialisation
    initial = TRM(TRMConfig.from_dict(torch.load(tmp_path / "single" / "rank0.pt")["model_config"])).state_dict()
    moved = (initial["inner.lm_head.weight"] - single["model"]["inner.lm_head.weight"]).abs().max()
    assert moved > 5e-3


def _spawn_run(world_size, cfg_dict, out_dir):
    out_dir.mkdir(parents=True)
    mp.spawn(_worker, args=(world_size, _free_port(), cfg_dict, str(out_dir / "run"), str(out_dir)),
             nprocs=world_size, join=True)
    return torch.load(out_dir / "rank0.pt")


@pytest.mark.slow
def test_micro_batches_match_data_parallel_ranks(tiny_config, tmp_path):
    """Global batch 8 in micro-batches of 2: one process with 4, two gloo ranks with 2 each and four
    ranks with 1 each run the same slices with the same carries, so they end with the same weights
    (up to the order of the gradient sums). No exploration: its draws are per process."""
    cfg = tiny_config("max_steps=4", "micro_batch_size=2", "model.halt_exploration_prob=0.0", "log_interval=1")
    cfg_dict = config_lib.to_dict(cfg)
    runs = {world: _spawn_run(world, cfg_dict, tmp_path / f"world{world}") for world in (1, 2, 4)}
    single = runs[1]
    assert all(run["step"] == 4 for run in runs.values())
    for world in (2, 4):
        for key, value in single["model"].items():
            assert torch.allclose(runs[world]["model"][key], value, rtol=0, atol=1e-5), (world, key)
        for key, value in single["ema"].items():
            assert torch.allclose(runs[world]["ema"][key], value, rtol=0, atol=1e-5), (world, key)
    # the puzzle rows (sign-SGD over every micro-batch's and rank's rows) moved identically
    table = "inner.puzzle_emb.weights"
    assert single["model"][table].abs().sum() > 0
    for world in (2, 4):
        assert torch.equal(runs[world]["model"][table], single["model"][table]), world
    # and the weights really moved (4 steps of ~lr each), so the comparison means something
    from trm_fast.model.reference import TRM, TRMConfig

    torch.manual_seed(cfg.seed)  # the trainer's initialisation
    initial = TRM(TRMConfig.from_dict(single["model_config"])).state_dict()
    assert (initial["inner.lm_head.weight"] - single["model"]["inner.lm_head.weight"]).abs().max() > 5e-3
    records = [json.loads(line) for line in (tmp_path / "world1" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3, 4]
