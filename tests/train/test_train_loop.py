"""The training loop on a tiny config: it learns, resumes exactly, stops on time / Ctrl-C with a
checkpoint, and writes its run directory."""
import json
import shutil
import signal

import pytest
import torch

from trm_fast.train import checkpoint as ckpt
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
    assert set(payload["ranks"][0]) == {"rng", "sampler", "carry"}
    assert payload["ranks"][0]["carry"]["y_answer"].shape[0] == 8
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
        assert torch.equal(rank_a["carry"][key], rank_b["carry"][key]), key
    assert torch.equal(rank_a["rng"]["torch"], rank_b["rng"]["torch"])
    assert rank_a["sampler"] == rank_b["sampler"]
    assert a["metrics"] == b["metrics"]  # the final evaluation too


def test_resume_without_checkpoint_is_an_error(tiny_config, tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="nothing to resume"):
        train(tiny_config(), tmp_path / "empty", resume=True, progress=False)


def test_ctrl_c_saves_a_checkpoint_and_stops(tiny_config, tmp_path, monkeypatch):
    original_step = Trainer.train_step

    def step_then_interrupt(self, batch):
        metrics = original_step(self, batch)
        if self.step == 3:
            signal.raise_signal(signal.SIGINT)  # what Ctrl-C delivers; the handler only sets a flag
        return metrics

    monkeypatch.setattr(Trainer, "train_step", step_then_interrupt)
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


@pytest.mark.parametrize("extra, check", [
    # Q-continue target on: its loss is trained and reported
    (("model.no_act_continue=false",), lambda record: record["train/q_continue_loss"] > 0),
    # no puzzle embedding: no sign-SGD, still trains
    (("model.puzzle_emb_ndim=0", "model.puzzle_emb_len=0"), lambda record: record["train/q_continue_loss"] == 0),
    # softmax cross entropy instead of stable-max, no EMA
    (("loss_type=softmax", "ema=false"), lambda record: record["train/lm_loss"] > 0),
])
def test_variants_train(tiny_config, tmp_path, extra, check):
    result = train(tiny_config("max_steps=2", *extra), tmp_path / "run", progress=False, log=lambda _line: None)
    assert result.step == 2 and result.final_eval is not None
    record = [r for r in read_metrics(tmp_path / "run") if "train/loss" in r][-1]
    assert check(record), record


def test_static_step_that_cuda_graphs_capture_matches_the_eager_step(tiny_config, tmp_path):
    """The function GraphedStep captures (in-place carry, device-scalar lr and step, capturable
    AdamATan2) run eagerly on CPU gives the same training as the default step."""
    from trm_fast.train.loop import Trainer

    cfg = tiny_config("max_steps=8", "model.halt_exploration_prob=0.0")
    finals = []
    for static in (False, True):
        trainer = Trainer(cfg, tmp_path / f"run-{static}", progress=False, log=lambda _line: None, static_step=static)
        try:
            trainer.run()
        finally:
            trainer.close()
        finals.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
        assert trainer.optimizer.capturable is static
    for key, value in finals[0].items():
        torch.testing.assert_close(finals[1][key], value, rtol=1e-5, atol=1e-6, msg=key)
