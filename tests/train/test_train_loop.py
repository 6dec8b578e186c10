"""The training loop on a tiny config: it learns, resumes exactly, stops on time / Ctrl-C with a
checkpoint, and writes its run directory."""
import json
import shutil
import signal

import pytest
import torch

from trm_fast.train import run_directory as ckpt
from trm_fast.train.loop import Trainer, train


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_short_training_lowers_the_loss(tiny_config, tmp_path):
    cfg = tiny_config("max_steps=40", "log_interval=4")
    result = train(cfg, tmp_path / "run", progress=False, log=lambda _line: None)
    losses = [r["train/loss"] for r in read_metrics(tmp_path / "run") if "train/loss" in r]
    assert len(losses) == 10
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:2]) / 2, losses
    assert result.stopped_by == "max_steps" and result.step == 40
    final = json.loads((tmp_path / "run" / "final_eval.json").read_text())
    assert final["step"] == 40 and final["test/count"] == 12  # the whole (tiny) test split
    assert 0.0 <= final["test/accuracy"] <= 1.0


def test_run_directory_contents(tiny_config, tmp_path):
    cfg = tiny_config("max_steps=4", "checkpoint_interval=1", "keep_checkpoints=2")
    run_dir = tmp_path / "run"
    train(cfg, run_dir, progress=False, log=lambda _line: None)
    assert json.loads((run_dir / "config.json").read_text())["model"]["hidden_size"] == 32
    assert [step for step, _ in ckpt.list_checkpoints(run_dir)] == [3, 4]  # last k kept
    payload = ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir))
    assert payload["step"] == 4 and payload["world_size"] == 1
    assert set(payload["ranks"][0]) == {"rng", "sampler", "carries"}
    assert [carry["y_answer"].shape[0] for carry in payload["ranks"][0]["carries"]] == [8]
    ema_weight = payload["ema_model"]["inner.lm_head.weight"]
    raw_weight = payload["model"]["inner.lm_head.weight"]
    assert not torch.equal(ema_weight, raw_weight)  # the EMA copy is a different (averaged) tensor
    records = read_metrics(run_dir)
    assert [r["step"] for r in records if "train/loss" in r] == [2, 4]
    assert records[-1]["final"] is True


def _final_state(run_dir):
    payload = ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir))
    return payload


def test_resume_continues_exactly(tiny_config, tmp_path):
    """10 steps straight == 5 steps, checkpoint, fresh state, resume to 10 (bit-identical on CPU).

    Step 5 is mid-way through the slots' supervision (halt_max_steps 4: they restarted at step 5),
    so the ACT carry matters; the RNG state (exploration draws) is compared at the end."""
    quiet = dict(progress=False, log=lambda _line: None)
    cfg = tiny_config("max_steps=10", "checkpoint_interval=5", "model.halt_exploration_prob=0.5")
    straight = tmp_path / "straight"
    train(cfg, straight, **quiet)

    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(ckpt.checkpoint_path(straight, 5), ckpt.checkpoint_path(resumed, 5))
    torch.manual_seed(12345)  # a different global RNG state: the checkpoint must restore it
    result = train(cfg, resumed, resume=True, **quiet)
    assert result.step == 10

    a, b = _final_state(straight), _final_state(resumed)
    assert a["step"] == b["step"] == 10
    for part in ("model", "ema_model"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(pa["exp_avg"], pb["exp_avg"]) and torch.equal(pa["exp_avg_sq"], pb["exp_avg_sq"])
    rank_a, rank_b = a["ranks"][0], b["ranks"][0]
    for key in ("steps", "halted", "z_latent", "y_answer"):
        assert torch.equal(rank_a["carries"][0][key], rank_b["carries"][0][key]), key
    assert torch.equal(rank_a["rng"]["torch"], rank_b["rng"]["torch"])
    assert rank_a["sampler"] == rank_b["sampler"]
    assert a["metrics"] == b["metrics"]  # the final evaluation too


def test_resume_with_another_model_config_names_the_fields(tiny_config, tmp_path):
    _quiet_train(tiny_config("max_steps=2"), tmp_path / "run")
    with pytest.raises(ckpt.CheckpointError, match=r"model config differs from this run's \(l_cycles: 1 there, 2 here\)$"):
        train(tiny_config("max_steps=4", "model.l_cycles=2"), tmp_path / "run", resume=True, progress=False,
              log=lambda _line: None)


def test_resume_without_checkpoint_is_an_error(tiny_config, tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="nothing to resume"):
        train(tiny_config(), tmp_path / "empty", resume=True, progress=False)


def test_ctrl_c_saves_a_checkpoint_and_stops(tiny_config, tmp_path, monkeypatch):
    original_step = Trainer.advance

    def step_then_interrupt(self, batch):
        metrics = original_step(self, batch)
        if self.step == 3:
            signal.raise_signal(signal.SIGINT)  # what Ctrl-C delivers; the handler only sets a flag
        return metrics

    monkeypatch.setattr(Trainer, "advance", step_then_interrupt)
    handler_before = signal.getsignal(signal.SIGINT)
    run_dir = tmp_path / "run"
    result = train(tiny_config("max_steps=20"), run_dir, progress=False, log=lambda _line: None)
    assert result.stopped_by == "interrupt" and result.step == 3 and result.final_eval is None
    assert [step for step, _ in ckpt.list_checkpoints(run_dir)] == [3]
    assert signal.getsignal(signal.SIGINT) == handler_before  # our handler is gone again


def test_max_minutes_bounds_the_run(tiny_config, tmp_path):
    result = train(tiny_config("max_steps=1000", "max_minutes=0.0001"), tmp_path / "run", progress=False,
                   log=lambda _line: None)
    assert result.stopped_by == "max_minutes" and result.step == 1
    assert result.final_eval is not None and result.final_eval["test/count"] == 12
    assert [step for step, _ in ckpt.list_checkpoints(tmp_path / "run")] == [1]


def _quiet_train(cfg, run_dir):
    trainer = Trainer(cfg, run_dir, progress=False, log=lambda _line: None)
    try:
        trainer.run()
    finally:
        trainer.close()
    return trainer


def _first_record(run_dir):
    return [r for r in read_metrics(run_dir) if "train/loss" in r][0]


def test_q_continue_target_is_trained_and_reported(tiny_config, tmp_path):
    _quiet_train(tiny_config("max_steps=2", "log_interval=1"), tmp_path / "off")
    _quiet_train(tiny_config("max_steps=2", "log_interval=1", "model.no_act_continue=false"), tmp_path / "on")
    assert _first_record(tmp_path / "off")["train/q_continue_loss"] == 0.0
    on = _first_record(tmp_path / "on")
    assert on["train/q_continue_loss"] > 0.0
    # the total the trainer optimises includes it: lm + 0.5 * (q_halt + q_continue)
    assert on["train/loss"] == pytest.approx(on["train/lm_loss"] + 0.5 * (on["train/q_halt_loss"] + on["train/q_continue_loss"]))


def test_without_puzzle_embedding_there_is_no_sign_sgd_and_weights_still_train(tiny_config, tmp_path):
    trainer = _quiet_train(tiny_config("max_steps=2", "model.puzzle_emb_ndim=0", "model.puzzle_emb_len=0"), tmp_path / "run")
    assert trainer.model.puzzle_emb is None and trainer.train_step.sign_sgd is None
    payload = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "run"))
    assert not any("puzzle_emb" in key for key in payload["model"])
    torch.manual_seed(trainer.cfg.seed)  # the trainer's initialisation
    initial = type(trainer.model)(trainer.model.config).state_dict()
    assert not torch.equal(initial["inner.lm_head.weight"], payload["model"]["inner.lm_head.weight"])


def test_softmax_loss_and_no_ema(tiny_config, tmp_path):
    stablemax = _first_record(_quiet_train(tiny_config("max_steps=1", "log_interval=1"), tmp_path / "a").run_dir)
    trainer = _quiet_train(tiny_config("max_steps=1", "log_interval=1", "loss_type=softmax", "ema=false"), tmp_path / "b")
    softmax = _first_record(trainer.run_dir)
    # same weights, same batch: only the cross entropy differs, so the first LM loss does too
    assert softmax["train/lm_loss"] != pytest.approx(stablemax["train/lm_loss"], rel=1e-3)
    payload = ckpt.load_checkpoint(ckpt.latest_checkpoint(trainer.run_dir))
    assert payload["ema"] is None
    for key, value in payload["model"].items():  # evaluation uses the raw weights
        assert torch.equal(payload["ema_model"][key], value), key


def test_micro_batches_of_one_process_train_like_the_whole_batch(tiny_config, tmp_path):
    """Splitting the batch changes only the order of the gradient sums (no exploration: its draws
    depend on how the batch is split). The data-parallel equivalence is in test_train_distributed."""
    cfg = tiny_config("max_steps=4", "model.halt_exploration_prob=0.0")
    whole = _quiet_train(cfg, tmp_path / "whole")
    split = _quiet_train(tiny_config("max_steps=4", "model.halt_exploration_prob=0.0", "micro_batch_size=2"), tmp_path / "split")
    assert split.train_step.num_micro_batches == 4 and len(split.train_step.carries) == 4
    for key, value in whole.model.state_dict().items():
        torch.testing.assert_close(split.model.state_dict()[key], value, rtol=0, atol=1e-5, msg=key)
    with pytest.raises(Exception, match="micro_batch_size 3 does not divide"):
        Trainer(tiny_config("micro_batch_size=3"), tmp_path / "bad", progress=False, log=lambda _line: None)


def test_throughput_is_logged_as_tokens_per_second_and_mfu_on_gpu(tiny_config, tmp_path, monkeypatch):
    trainer = _quiet_train(tiny_config("max_steps=2", "log_interval=1"), tmp_path / "run")
    record = _first_record(trainer.run_dir)
    assert record["tokens_per_second"] == pytest.approx(record["steps_per_second"] * 8 * 36)  # batch x 6x6 grid
    assert "mfu" not in record  # no FLOP peak for a CPU
    # On a GPU with a known peak, MFU = model FLOPs per second / peak (trm_fast.flops).
    from trm_fast import flops

    monkeypatch.setattr(trainer, "device", torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    figures = trainer.throughput(steps_per_second=2.0)
    step_flops = flops.train_step_flops(trainer.model.config, 8)
    assert figures["mfu"] == pytest.approx(2.0 * step_flops / flops.peak_flops("NVIDIA H200", "float32"))


def test_a_failing_compile_falls_back_to_eager_with_one_line(tiny_config, tmp_path, monkeypatch):
    def broken_compile(model, *args, **kwargs):
        def compiled(*inputs):
            raise RuntimeError("C++ compiler not found\nlong details")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    lines = []
    result = train(tiny_config("max_steps=3", "compile=true"), tmp_path / "run", progress=False, log=lines.append)
    assert result.step == 3 and result.final_eval is not None
    fallback = [line for line in lines if "torch.compile failed" in line]
    assert fallback == ["torch.compile failed (RuntimeError: C++ compiler not found); training continues eagerly"]


def test_the_loop_logs_its_share_of_the_time_outside_the_step(tiny_config, tmp_path):
    trainer = _quiet_train(tiny_config("max_steps=4", "log_interval=2"), tmp_path / "run")
    records = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    shares = [r["outside_step_share"] for r in records if "steps_per_second" in r]
    assert len(shares) == 2 and all(0.0 <= share < 1.0 for share in shares)


def test_time_to_accuracy_is_logged_once_per_threshold(tiny_config, tmp_path, monkeypatch):
    from trm_fast.train import loop

    trainer = loop.Trainer(tiny_config("max_steps=6", "eval_interval=2"), tmp_path / "run", progress=False, log=lambda _line: None)
    exact = iter([0.1, 0.85, 0.95, 0.95])  # the periodic evaluations at steps 2 and 4, then the final one
    real_evaluation = trainer.run_evaluation

    def evaluation(limit, prefix="eval/"):
        return {**real_evaluation(limit, prefix), prefix + "exact_accuracy": next(exact)}

    monkeypatch.setattr(trainer, "run_evaluation", evaluation)
    trainer.run()
    records = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    reached = {name: (r["step"], value) for r in records for name, value in r.items() if name.startswith("time_to/")}
    assert set(reached) == {"time_to/exact_50", "time_to/exact_80", "time_to/exact_90"}
    assert reached["time_to/exact_50"][0] == reached["time_to/exact_80"][0] == 4  # 0.85 at step 4
    assert reached["time_to/exact_90"][0] == 6  # the final evaluation's 0.95
    assert 0 < reached["time_to/exact_50"][1] <= reached["time_to/exact_90"][1]
