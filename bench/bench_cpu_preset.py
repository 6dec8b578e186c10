"""The CPU preset's training step against the trainer's default engine, side by side in one run.

All three are the trainer's own `TrainStep` on the `maze-cpu` preset (its model, batch 64 and 7x7
mazes); only how the step runs differs:

    default_engine   engine=fast, eager, float32: what `trm-fast train` ran on a CPU before the
                     preset was tuned for speed; the baseline of the ratios
    compiled_fp32    the same compiled with torch.compile (inductor's C++ code)
    preset           the preset as shipped: compiled, and a bf16 forward where the CPU has native bf16
                     dot products (it falls back to float32 elsewhere; `forward_dtype` says which ran)

Each configuration's steps/s and its ratio to default_engine land in the summary table. Compile time
is spent in the warm-up, outside the timed steps (the trainer's log shows it: ~30 s).
"""
import pytest
import torch

from bench._engines import ENGINE_SPECS, MAZE_CPU, BenchCase, TrainEngine, median_seconds, teardown
from trm_fast import config as config_lib

CONFIGS = {
    "default_engine": ["compile=false", "model.forward_dtype=float32"],
    "compiled_fp32": ["compile=true", "model.forward_dtype=float32"],
    "preset": [],
}
GROUP = "train/maze-cpu preset"
ROUNDS, WARMUP = 9, 2  # a step is ~0.1-0.4 s on one thread; compilation happens in the first warm-up


def build(config_name: str) -> TrainEngine:
    cfg = config_lib.apply_overrides(config_lib.preset("maze-cpu"), CONFIGS[config_name])
    spec = ENGINE_SPECS["fast_torch_compiled" if cfg.compile else "fast_torch"]
    return TrainEngine(spec, BenchCase("maze_cpu_preset", cfg, MAZE_CPU), torch.device("cpu"))


def measure_baseline() -> float:
    return median_seconds(build("default_engine"), ROUNDS, WARMUP, torch.device("cpu"))


@pytest.mark.parametrize("config_name", list(CONFIGS))
def test_cpu_preset_step(benchmark, bench_profile, recorder, config_name):
    if bench_profile.on_gpu:
        pytest.skip("the CPU preset's step is a CPU benchmark")
    if bench_profile.compile_backend != "inductor":
        pytest.skip(f"the {bench_profile.name} profile compiles with {bench_profile.compile_backend}, not inductor's C++ code")
    engine = build(config_name)
    model_config = engine.train_step.model.config
    baselines = {} if config_name == "default_engine" else {"default_engine": measure_baseline}
    try:
        record = recorder.measure(
            benchmark, GROUP, config_name, engine.step, rounds=ROUNDS, warmup=WARMUP,
            work={"tokens": engine.case.tokens_per_step, "puzzles": engine.case.batch_size},
            baselines=baselines,
            extra={"steps_per_s": None, "forward_dtype": model_config.forward_dtype,
                   "compiled": engine.spec.compiled, "threads": torch.get_num_threads()},
        )
        record.values["steps_per_s"] = 1.0 / record.seconds
        benchmark.extra_info["steps_per_s"] = record.values["steps_per_s"]
        recorder.save()
        assert bool(engine.step().isfinite().all()), f"{config_name}: non-finite metrics"
    finally:
        teardown(engine, torch.device("cpu"))
