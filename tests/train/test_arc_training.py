"""ARC training: the presets' values (the reference ARC runs), the puzzle-embedding table in the
memory estimate, and a tiny run on ARC data whose evaluations vote (eval/pass@k, best.json by pass@2)."""
import json

import pytest

from trm_fast import config as config_lib
from trm_fast import memory as memory_lib
from trm_fast import presets
from trm_fast.config import ConfigError
from trm_fast.puzzles import KINDS


@pytest.mark.parametrize("name, version", [("arc-paper", 1), ("arc2-paper", 2)])
def test_arc_paper_presets_are_the_reference_runs(name, version):
    cfg = presets.preset(name)
    config_lib.validate(cfg)
    assert cfg.dataset == "arc" and cfg.arc.version == version and cfg.arc.num_aug == 1000
    assert cfg.arc.canvas == 30 and cfg.arc.seed == 42
    model = cfg.model
    assert (model.hidden_size, model.num_heads, model.num_layers, model.h_cycles, model.l_cycles) == (512, 8, 2, 3, 4)
    assert (model.halt_max_steps, model.puzzle_emb_len, model.puzzle_emb_ndim) == (16, 16, 512)
    assert not model.mlp_t and model.pos_encodings == "rope" and model.forward_dtype == "bfloat16"
    assert cfg.lr == 1e-4 and cfg.puzzle_emb_lr == 1e-2
    assert cfg.weight_decay == 0.1 and cfg.puzzle_emb_weight_decay == 0.1
    assert (cfg.beta1, cfg.beta2) == (0.9, 0.95)
    assert cfg.global_batch_size == 768 and cfg.lr_warmup_steps == 2000 and cfg.lr_min_ratio == 1.0
    assert cfg.ema and cfg.ema_rate == 0.999
    assert cfg.epochs == 100000 and cfg.max_steps is None and cfg.max_minutes is None
    assert cfg.best_metric == "pass@2" and cfg.device == "cuda"
    # eval every 10,000 epochs in steps: an epoch is one augmented puzzle of every task with its pairs
    examples_per_epoch = {1: 3081, 2: 4666}[version]
    assert cfg.eval_interval == pytest.approx(10000 * examples_per_epoch / 768, rel=0.01)


def test_arc_cpu_preset_is_the_measured_configuration():
    """docs/arc.md's figures were measured with these values: a change must update both."""
    cfg = presets.preset("arc-cpu")
    config_lib.validate(cfg)
    assert cfg.dataset == "arc" and cfg.arc.version == 1 and cfg.arc.canvas == 6 and cfg.arc.num_aug == 8
    assert cfg.arc.test_subset == "training" and cfg.eval_examples is None
    model = cfg.model
    assert (model.hidden_size, model.num_heads, model.h_cycles, model.l_cycles) == (96, 4, 2, 2)
    assert (model.puzzle_emb_len, model.halt_max_steps, model.forward_dtype) == (1, 8, "bfloat16")
    assert cfg.puzzle_emb_lr == 1e-2 and cfg.max_minutes == 30 and cfg.device == "cpu"
    assert cfg.best_metric == "pass@2"


def test_presets_listing_describes_the_arc_presets(capsys):
    from trm_fast.cli import main

    assert main(["presets"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert "ARC-AGI-1" in lines["arc-paper"] and "1000 augmentations" in lines["arc-paper"]
    assert "ARC-AGI-2" in lines["arc2-paper"]
    assert "6x6 canvas" in lines["arc-cpu"] and "maze" not in lines["arc-cpu"]


def test_arc_identifier_count_from_the_settings():
    cfg = presets.preset("arc-paper")
    assert KINDS["arc"].puzzle_identifiers(cfg.arc) == 800 * 1001 + 1
    assert KINDS["arc"].puzzle_identifiers(presets.preset("arc2-paper").arc) == 1120 * 1001 + 1
    config_lib.apply_overrides(cfg, ["arc.subsets=training,evaluation,concept", "arc.max_tasks=100"])
    assert KINDS["arc"].puzzle_identifiers(cfg.arc) == 300 * 1001 + 1


def test_memory_estimate_counts_the_puzzle_table():
    cfg = presets.preset("arc-paper")
    model = memory_lib.estimated_model_config(cfg)
    assert (model.vocab_size, model.seq_len, model.puzzle_emb_ndim) == (12, 900, 512)
    identifiers = model.num_puzzle_identifiers
    assert identifiers == 800 * 1001 + 1
    table = identifiers * 512 * 4  # fp32, ~1.6 GB (sign-SGD keeps no state beyond the rows' gradients)
    estimate = memory_lib.step_memory(model, 768)
    assert estimate.puzzle_table == pytest.approx(table, rel=0.01)
    assert memory_lib.puzzle_table_bytes(model) == table
    # the fixed part grows by the table against the same model with one identifier (maze-paper's shape)
    one_row = memory_lib.step_memory(config_lib.model_config(cfg, 12, 900, 1), 768)
    assert estimate.fixed - one_row.fixed == pytest.approx(table, rel=0.01)
    assert estimate.total(8) - one_row.total(8) == pytest.approx(table, rel=0.01)
    # the table alone decides whether a tight device fits (an 80 GB device still takes 256 of 768)
    micro = memory_lib.choose_micro_batch(768, estimate, 80 * memory_lib.GIB)
    assert micro == 256
    free = (one_row.fixed + one_row.per_example) / 0.85 + 1
    assert memory_lib.choose_micro_batch(768, one_row, free) == 1
    with pytest.raises(ValueError):
        memory_lib.choose_micro_batch(768, estimate, free)


def test_memory_message_names_the_table(monkeypatch):
    import torch

    cfg = presets.preset("arc-paper")
    model = memory_lib.estimated_model_config(cfg)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (140 * memory_lib.GIB, 141 * memory_lib.GIB))
    micro, message = memory_lib.micro_batch_for(model, cfg, 768, "cuda")
    assert micro == 384
    assert "puzzle-embedding table 1.5 GiB" in message


def test_pass_at_k_needs_arc_data(tiny_config, tmp_path):
    from trm_fast.train import train

    with pytest.raises(ConfigError, match="pass@2 needs ARC data"):
        train(tiny_config("best_metric=pass@2"), tmp_path / "run", progress=False, log=lambda _: None)


@pytest.fixture(scope="module")
def tiny_arc_folder(tmp_path_factory):
    """Four training and four evaluation tasks of ARC-AGI-1 that fit a 6x6 canvas, 7 augmentations."""
    from trm_fast.data.arc_build import build_arc_dataset

    return build_arc_dataset(tmp_path_factory.mktemp("arc") / "tiny", version=1, num_aug=7, canvas=6, max_tasks=4,
                             progress=False)


def test_is_arc_folder(tiny_arc_folder, tiny_data_dir):
    from trm_fast.train.arc_eval import is_arc_folder

    assert is_arc_folder(tiny_arc_folder)
    assert not is_arc_folder(tiny_data_dir) and not is_arc_folder(None)


def test_tiny_arc_run_votes_and_keeps_the_best_pass_at_2(tiny_arc_folder, tmp_path):
    from trm_fast.train import train

    cfg = presets.preset("arc-cpu")
    config_lib.apply_overrides(cfg, [
        f"dataset={tiny_arc_folder}", "compile=false", "model.hidden_size=32", "model.num_heads=2",
        "model.h_cycles=2", "model.l_cycles=1", "model.halt_max_steps=4", "model.forward_dtype=float32",
        "global_batch_size=16", "lr=3e-3", "lr_warmup_steps=5", "max_steps=60", "max_minutes=none",
        "eval_interval=20", "eval_examples=none", "eval_batch_size=40", "log_interval=10",
        "checkpoint_interval=none", "backend=torch", "seed=0",
    ])
    lines = []
    result = train(cfg, tmp_path / "run", progress=False, log=lines.append)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert losses[-1] < 0.85 * losses[0]
    periodic = [r for r in records if "eval/exact_accuracy" in r]
    assert [r["step"] for r in periodic] == [20, 40]
    for record in periodic:
        for k in (1, 2, 5):
            assert 0.0 <= record[f"eval/pass@{k}"] <= 1.0
        assert record["eval/pass@1"] <= record["eval/pass@2"] <= record["eval/pass@5"]
        assert "eval/best_pass@2" in record
    final = [r for r in records if r.get("final")][0]
    assert final["test/lm_loss"] < periodic[0]["eval/lm_loss"]
    assert 0.0 <= final["test/pass@2"] <= 1.0 and result.final_eval["test/pass@2"] == final["test/pass@2"]
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    assert best["metric"] == "eval/pass@2"
    assert best["value"] == max(r["eval/pass@2"] for r in periodic)
    assert (tmp_path / "run" / best["file"]).is_file()
    # the eval lines print the vote; the final vote writes the submission
    assert any("step 20 eval:" in line and "pass@2" in line for line in lines)
    assert any("held-out test" in line and "pass@2" in line for line in lines)
    submission = json.loads((tmp_path / "run" / "submission.json").read_text())
    assert set(submission) == set(json.loads((tiny_arc_folder / "test_puzzles.json").read_text()))
    votes = json.loads((tmp_path / "run" / "arc_results.json").read_text())
    assert votes["predictions"] == final["test/count"] == 40 and votes["unmatched"] == 0  # every test example voted


def _arc_worker(rank, world_size, port, cfg_dict, run_dir, out_dir):
    import os

    import torch

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from trm_fast.train.loop import Trainer

    trainer = Trainer(config_lib.from_dict(cfg_dict), run_dir, progress=False, log=lambda _line: None)
    try:
        result = trainer.run()
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
            json.dump({"final_eval": result.final_eval, "best": trainer.best}, handle)
    finally:
        trainer.close()


@pytest.mark.slow
def test_two_ranks_vote_on_their_shares_and_rank0_merges(tiny_arc_folder, tmp_path):
    import socket

    import torch.multiprocessing as mp

    cfg = presets.preset("arc-cpu")
    config_lib.apply_overrides(cfg, [
        f"dataset={tiny_arc_folder}", "compile=false", "model.hidden_size=32", "model.num_heads=2",
        "model.h_cycles=2", "model.l_cycles=1", "model.halt_max_steps=2", "model.forward_dtype=float32",
        "model.halt_exploration_prob=0.0", "global_batch_size=8", "max_steps=4", "max_minutes=none",
        "eval_interval=2", "eval_examples=none", "eval_batch_size=8", "log_interval=2",
        "checkpoint_interval=none", "backend=torch",
    ])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_arc_worker, args=(2, port, config_lib.to_dict(cfg), str(tmp_path / "run"), str(tmp_path)),
             nprocs=2, join=True)
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0 == rank1  # the merged vote reaches every rank, so both keep the same best
    assert "test/pass@2" in rank0["final_eval"] and rank0["best"]["metric"] == "eval/pass@2"
    votes = json.loads((tmp_path / "run" / "arc_results.json").read_text())
    assert votes["predictions"] == rank0["final_eval"]["test/count"] == 40  # both ranks' shares, merged
    assert votes["unmatched"] == 0
