"""The CPU preset's training step against the trainer's default engine, side by side in one run.

All three are the trainer's own `TrainStep` on the `maze-cpu` preset (its model, batch 64 and 7x7
mazes); only how the step runs differs:

    default_engine   engine=fast, eager, float32: what `trm-fast train` ran on a CPU before the
                     preset was tuned for speed; the baseline of the ratios
    compiled_fp32    the same compiled with torch.compile (inductor's C++ code)
    preset           the preset as shipped: compiled, and a bf16 forward where the CPU has native bf16
                     dot products (it falls back to float32 elsewhere; `forward_dtype` says which ran)

The rounds are interleaved (one step of each configuration per round), so a slow spell of a shared
machine hits all three alike instead of whichever ran then. Each configuration's steps/s and its ratio
to default_engine land in the summary table. Compile time is spent in the warm-up, outside the timed
steps (the trainer's log shows it: ~30 s).
"""
import pytest
import torch

from bench._engines import ENGINE_SPECS, MAZE_CPU, BenchCase, TrainEngine, teardown
from bench.timing import device_seconds
from trm_fast import config as config_lib

CONFIGS = {
    "default_engine": ["compile=false", "model.forward_dtype=float32"],
    "compiled_fp32": ["compile=true", "model.forward_dtype=float32"],
    "preset": [],
}
BASELINE = "default_engine"
GROUP = "train/maze-cpu preset"
ROUNDS, WARMUP = 12, 2  # a step is ~0.1-0.4 s on one thread; compilation happens in the first warm-up


def build(config_name: str) -> TrainEngine:
    cfg = config_lib.apply_overrides(config_lib.preset("maze-cpu"), CONFIGS[config_name])
    spec = ENGINE_SPECS["fast_torch_compiled" if cfg.compile else "fast_torch"]
    return TrainEngine(spec, BenchCase("maze_cpu_preset", cfg, MAZE_CPU), torch.device("cpu"))


def test_cpu_preset_step_side_by_side(benchmark, bench_profile, recorder):
    if bench_profile.on_gpu:
        pytest.skip("the CPU preset's step is a CPU benchmark")
    if bench_profile.compile_backend != "inductor":
        pytest.skip(f"the {bench_profile.name} profile compiles with {bench_profile.compile_backend}, not inductor's C++ code")
    engines = {name: build(name) for name in CONFIGS}
    seconds = {name: [] for name in CONFIGS}

    def one_round():
        for name, engine in engines.items():
            seconds[name] += device_seconds(engine.step, torch.device("cpu"))

    try:
        for _ in range(WARMUP):
            one_round()
        for times in seconds.values():
            times.clear()
        benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
        for name, engine in engines.items():
            record = recorder.record(
                None, GROUP, name, seconds[name],
                work={"tokens": engine.case.tokens_per_step, "puzzles": engine.case.batch_size},
                baselines={} if name == BASELINE else {BASELINE: None},
                extra={"forward_dtype": engine.train_step.model.config.forward_dtype, "compiled": engine.spec.compiled,
                       "threads": torch.get_num_threads()},
            )
            record.values["steps_per_s"] = 1.0 / record.seconds
            benchmark.extra_info[name] = record.as_dict()
            assert bool(engine.step().isfinite().all()), f"{name}: non-finite metrics"
        recorder.save()
    finally:
        for engine in engines.values():
            teardown(engine, torch.device("cpu"))
