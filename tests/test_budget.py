"""The time-budget rule (trm_fast.budget): --max-steps sets the schedule, --max-minutes alone fills the
minutes with a length measured in the warm-up and recorded so that --max-steps reproduces the run."""
import json
import math
import types

import pytest
import torch

from trm_fast import budget, config as config_lib
from trm_fast.config import ConfigError
from trm_fast.train import run_directory as ckpt
from tests.train.conftest import tiny_config, tiny_data_dir  # noqa: F401 - fixtures


def test_flags_replace_the_presets_budget_and_neither_keeps_it():
    assert budget.fills_time(config_lib.preset("maze-cpu"))  # the quick start fills its 13.5 minutes
    cfg = config_lib.preset("sudoku-cpu")
    budget.apply_budget(cfg, None, None)
    assert (cfg.max_steps, cfg.max_minutes) == (6000, 13.5) and not budget.fills_time(cfg)
    budget.apply_budget(cfg, 800, None)
    assert (cfg.max_steps, cfg.max_minutes) == (800, None) and budget.describe(cfg) == "800 steps"
    budget.apply_budget(cfg, None, 30)
    assert (cfg.max_steps, cfg.max_minutes) == (None, 30) and budget.fills_time(cfg)
    assert budget.describe(cfg) == "fills 30 min"
    budget.apply_budget(cfg, 800, 30)
    assert (cfg.max_steps, cfg.max_minutes) == (800, 30) and budget.describe(cfg) == "800 steps or 30 min"
    with pytest.raises(ConfigError, match="--max-steps must be >= 1"):
        budget.apply_budget(cfg, 0, None)
    with pytest.raises(ConfigError, match="--max-minutes must be > 0"):
        budget.apply_budget(cfg, None, -1)


def _fit(warmup=100, step=0, longest=10**9, start=0.0, minutes=10.0):
    cfg = config_lib.preset("maze-cpu")
    budget.apply_budget(cfg, None, minutes)
    cfg.lr_warmup_steps = warmup
    return budget.ScheduleFit.for_run(cfg, step, longest, start, start + minutes * 60)


def test_the_length_is_set_inside_the_warm_up_from_the_timed_steps():
    fit = _fit(warmup=100)
    assert (fit.timed_from, fit.decide_at) == (budget.UNTIMED_STEPS, budget.DECISION_STEP)
    # Steps 1-10 take 30 s (compile), every later one 0.5 s: only the later ones count.
    clock = 0.0
    for step in range(1, fit.decide_at + 1):
        clock += 3.0 if step <= 10 else 0.5
        length = fit.observe(step, clock)
        assert (length is None) == (step < fit.decide_at)
    assert fit.steps_per_second == pytest.approx(2.0)
    left = 600 - clock  # seconds before the deadline
    assert length == fit.decide_at + math.floor(2.0 * left * budget.FILL_SHARE)
    assert "schedule: %d steps to fill 10 min" % length in fit.message(length, 10)
    # a short warm-up decides earlier (nothing may depend on the length before the decision)
    assert _fit(warmup=20).decide_at == 20 and _fit(warmup=20).timed_from == 4


def test_the_length_never_passes_the_epochs_nor_falls_below_the_steps_done():
    fit = _fit(warmup=5, longest=30)
    assert [fit.observe(step, 0.001 * step) for step in range(1, 5)] == [None] * 4
    assert fit.observe(5, 0.005) == 30  # thousands would fit; the epochs end at 30
    late = _fit(warmup=5, minutes=0.001)  # the deadline is already past at the decision
    for step in range(1, 5):
        late.observe(step, float(step))
    assert late.observe(5, 5.0) == 5


def test_a_run_with_a_given_length_or_resumed_after_the_decision_is_not_fitted():
    cfg = config_lib.preset("sudoku-cpu")
    assert budget.ScheduleFit.for_run(cfg, 0, 10**6, 0.0, 60.0) is None  # 6000 steps given
    assert _fit(warmup=100, step=60) is None
    with pytest.raises(ConfigError, match="lr_warmup_steps >= 1"):
        _fit(warmup=0)


class _FakeClock:
    """time.monotonic for the trainer: every call advances 10 ms, so the run is the same every time."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        self.now += 0.01
        return self.now


def test_a_run_that_fills_its_minutes_records_a_length_that_max_steps_reproduces(tiny_config, tmp_path, monkeypatch):
    from trm_fast.train import loop

    clock = _FakeClock()
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(monotonic=clock.monotonic, perf_counter=loop.time.perf_counter,
                                                            strftime=loop.time.strftime))
    lines = []
    filled = tmp_path / "filled"
    result = loop.train(tiny_config("max_steps=none", "max_minutes=0.01", "lr_warmup_steps=4", "lr_min_ratio=0.1"),
                        filled, progress=False, log=lines.append)
    saved = json.loads((filled / "config.json").read_text())
    length = saved["max_steps"]
    assert length is not None and length > 4 and result.step == length and result.stopped_by != "max_minutes"
    records = [json.loads(line) for line in (filled / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in records if "schedule_steps" in r] == [{"step": 4, "schedule_steps": length}]
    assert any(line.startswith(f"schedule: {length} steps to fill 0.01 min") for line in lines)
    assert saved["max_minutes"] == 0.01

    monkeypatch.undo()
    rerun = tmp_path / "rerun"
    again = loop.train(tiny_config(f"max_steps={length}", "max_minutes=none", "lr_warmup_steps=4", "lr_min_ratio=0.1"),
                       rerun, progress=False, log=lambda _line: None)
    assert again.step == length
    first, second = (ckpt.load_checkpoint(ckpt.latest_checkpoint(d)) for d in (filled, rerun))
    assert all(torch.equal(first["model"][k], second["model"][k]) for k in first["model"])
    lrs = lambda d: [r["train/lr"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())  # noqa: E731
                     if "train/lr" in r]
    assert lrs(filled) == lrs(rerun) and lrs(filled)[-1] < lrs(filled)[0]  # the same cosine, run to its end


def test_the_gpu_notice_gives_the_paper_runs_length_and_a_shorter_way():
    cfg = config_lib.preset("maze-paper")
    steps, hours_h100 = budget.estimated_hours(cfg, "NVIDIA H100 80GB HBM3")
    assert steps == int(50000 * 1000 / 768)  # 50,000 epochs of 1,000 mazes at batch 768
    _, hours_a100 = budget.estimated_hours(cfg, "NVIDIA A100-SXM4-80GB")
    assert hours_h100 > 1 and hours_a100 / hours_h100 == pytest.approx(989 / 312)
    text = budget.gpu_run_notice(cfg, "NVIDIA H100 80GB HBM3", "trm-fast train --dataset maze --preset maze-cpu")
    assert text.startswith(f"maze-paper: {steps} steps (50000 epochs), about {hours_h100:.1f} h on NVIDIA H100")
    assert "--max-minutes 60" in text and text.endswith("trm-fast train --dataset maze --preset maze-cpu")
    unknown = budget.gpu_run_notice(cfg, "Some Future GPU", "quick")
    assert "duration is unknown" in unknown and unknown.endswith("quick")
    short = config_lib.preset("maze-cpu")
    assert "A shorter run" not in budget.gpu_run_notice(short, "NVIDIA H100", "quick")
    budget.apply_budget(cfg, None, 45)
    assert budget.gpu_run_notice(cfg, "NVIDIA H100", "quick") == "maze-paper: fills 45 min on NVIDIA H100"
