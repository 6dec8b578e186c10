"""The trainer's loop against its own step, side by side in one run: the share of a training run's
time spent outside `TrainStep` (sampling, metric reads, logging, periodic evaluation, checkpoints).

One `Trainer` on the maze-cpu preset (its model, batch, compile, log interval; 2,000 training mazes)
trains WARM_STEPS steps (compile, allocator warm-up), then a window of WINDOW steps through
`Trainer.run`, with the preset's periodic work at the preset's rate per step: evaluations every
EVAL_EVERY steps on eval_examples scaled alike (the preset: 200 every 1,000 steps), and a checkpoint
at every evaluation (the preset: one per 500 steps, so this window checkpoints more often than the
preset does and overstates the loop's share). Then the step the loop calls (`Trainer.run_step`: its
`TrainStep`) runs alone on batches from the same sampler. Both figures land in one table: steps/s of each and the share of the loop's time
outside the step, 1 - step seconds / loop seconds per step, next to the trainer's own per-window
`outside_step_share` (metrics.jsonl).
"""
import json

import pytest
import torch

from bench.timing import device_seconds
from trm_fast import config as config_lib
from trm_fast.train.evaluate import MODEL_KEYS, batch_to_device
from trm_fast.train.loop import Trainer

GROUP = "train/maze-cpu loop vs step"
WARM_STEPS, WINDOW, EVAL_EVERY = 40, 200, 100
STEP_ROUNDS = 30


def _trainer(tmp_path) -> Trainer:
    base = config_lib.preset("maze-cpu")
    examples = max(1, round(base.eval_examples * EVAL_EVERY / base.eval_interval))
    cfg = config_lib.apply_overrides(base, [
        "maze.num_train=2000", "maze.num_test=200", f"data_dir={tmp_path / 'data'}",
        f"max_steps={WARM_STEPS + WINDOW}", "max_minutes=none", f"eval_interval={EVAL_EVERY}",
        f"eval_examples={examples}", f"checkpoint_interval={EVAL_EVERY}",
        "backend=torch",  # what `trm-fast train` picks on a CPU; auto would pick the bench's Triton interpreter
    ])
    return Trainer(cfg, tmp_path / "run", progress=True, log=lambda _line: None)


def test_trainer_loop_against_its_step(benchmark, bench_profile, recorder, tmp_path):
    if bench_profile.on_gpu:
        pytest.skip("the CPU preset's loop is a CPU benchmark (on a GPU the step is asynchronous)")
    if bench_profile.compile_backend != "inductor":
        pytest.skip(f"the {bench_profile.name} profile compiles with {bench_profile.compile_backend}, not inductor's C++ code")
    trainer = _trainer(tmp_path)
    log_interval = trainer.cfg.log_interval
    trainer.run()
    records = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r for r in records if "steps_per_second" in r}
    end = WARM_STEPS + WINDOW
    loop_seconds = (logged[end]["elapsed_s"] - logged[WARM_STEPS]["elapsed_s"]) / WINDOW
    windows = [logged[step]["outside_step_share"] for step in range(WARM_STEPS + log_interval, end + 1, log_interval)]

    batches = [{k: v for k, v in batch_to_device(next(trainer.data.sampler), trainer.device).items() if k in MODEL_KEYS}
               for _ in range(STEP_ROUNDS)]
    step_seconds = []

    def steps_alone():
        step_seconds.extend(device_seconds(lambda: trainer.run_step(batches[len(step_seconds) % STEP_ROUNDS]),
                                           trainer.device))

    benchmark.pedantic(steps_alone, rounds=STEP_ROUNDS, iterations=1)
    step = recorder.record(None, GROUP, "train_step", step_seconds, extra={"threads": torch.get_num_threads()})
    loop = recorder.record(
        None, GROUP, "trainer_loop", [loop_seconds], baselines={"train_step": None},
        extra={"window_steps": WINDOW, "outside_step_share": 1.0 - step.seconds / loop_seconds,
               "trainer_outside_step_share": sum(windows) / len(windows), "threads": torch.get_num_threads()},
    )
    for record in (step, loop):
        record.values["steps_per_s"] = 1.0 / record.seconds
        benchmark.extra_info[record.variant] = record.as_dict()
    recorder.save()
    assert 0.0 <= loop.values["trainer_outside_step_share"] < 1.0
