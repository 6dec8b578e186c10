"""Evaluation throughput: puzzles/s for a batch run through all 16 supervision steps (+ metrics)."""
import math

import pytest

from bench._engines import ENGINE_SPECS, EvalEngine, earlier_baselines, median_seconds, op_backends, teardown
from bench.bench_step import case_for, skip_reason

EVAL_BASELINES = ("reference", "reference_compiled")


def eval_skip_reason(profile, engine_name, case_name):
    spec = ENGINE_SPECS[engine_name]
    if spec.cuda_graphs:
        return "no CUDA-graph engine for evaluation"
    if spec.backend != "torch" and not profile.on_gpu:
        return "16 steps in Triton's interpreter take minutes on CPU (the training benchmark covers that engine)"
    if spec.compiled and not profile.eval_compiled:
        return f"compiled evaluation is not in the {profile.name} profile"
    return skip_reason(profile, engine_name, case_name)


def _rounds(profile, engine_name):
    return profile.rounds, profile.warmup


def _baseline_thunk(profile, case_name, baseline):
    if eval_skip_reason(profile, baseline, case_name):
        return None

    def measure():
        engine = EvalEngine(ENGINE_SPECS[baseline], case_for(profile, case_name), profile.device,
                            compile_backend=profile.compile_backend)
        return median_seconds(engine, *_rounds(profile, baseline), profile.device)

    return measure


def test_eval(benchmark, bench_profile, recorder, case_name, engine_name):
    profile = bench_profile
    reason = eval_skip_reason(profile, engine_name, case_name)
    if reason:
        pytest.skip(reason)
    case = case_for(profile, case_name)
    engine = EvalEngine(ENGINE_SPECS[engine_name], case, profile.device, compile_backend=profile.compile_backend)
    rounds, warmup = _rounds(profile, engine_name)
    steps = case.config.halt_max_steps
    try:
        recorder.measure(
            benchmark,
            f"eval/{case_name}",
            engine_name,
            engine.step,
            rounds=rounds,
            warmup=warmup,
            work={"tokens": steps * case.tokens_per_step, "puzzles": case.batch_size, "flops": case.eval_flops},
            baselines={name: _baseline_thunk(profile, case_name, name) for name in earlier_baselines(engine_name, EVAL_BASELINES)},
            extra={"supervision_steps": steps, "batch_size": case.batch_size,
                   "op_backends": op_backends(ENGINE_SPECS[engine_name], profile.device)},
        )
        metrics = engine.step()
        assert math.isfinite(metrics["lm_loss"]), f"{engine_name}: non-finite evaluation loss"
    finally:
        teardown(engine, profile.device)
