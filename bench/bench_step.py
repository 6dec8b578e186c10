"""Whole training supervision step (forward + loss + backward + AdamATan2/EMA + sign-SGD) per engine.

Each engine's figures: tokens/s, puzzles/s (slots stepped per second), peak memory over the engine's
whole life (build, warm-up, capture, timed steps), MFU from `trm_fast.flops`, and its ratios to the
reference engines measured in this run (time and peak memory).
"""
import pytest

from bench._engines import (
    BASELINES,
    ENGINE_SPECS,
    TrainEngine,
    earlier_baselines,
    median_seconds,
    op_backends,
    paper_case,
    peak_memory_bytes,
    reset_peak_memory,
    teardown,
    tiny_case,
    why_unavailable,
)


def case_for(profile, case_name):
    return paper_case(case_name) if profile.on_gpu else tiny_case(case_name)


def skip_reason(profile, engine_name, case_name):
    spec = ENGINE_SPECS[engine_name]
    reason = why_unavailable(spec, profile.device)
    if reason:
        return reason
    if spec.compiled and case_name not in profile.compiled_cases:
        return f"compiled engines run on {', '.join(profile.compiled_cases)} in the {profile.name} profile"
    if spec.backend in ("triton", "cuda") and not profile.on_gpu and case_name not in profile.interpreted_cases:
        return f"Triton's interpreter runs on {', '.join(profile.interpreted_cases)} only in the {profile.name} profile"
    return None


def _engine_rounds(profile, engine_name):
    """The interpreter is ~1000x slower than a GPU: one warm-up, one timed step."""
    if ENGINE_SPECS[engine_name].backend != "torch" and not profile.on_gpu:
        return 1, 0
    return profile.rounds, profile.warmup


def _build(profile, engine_name, case):
    return TrainEngine(ENGINE_SPECS[engine_name], case, profile.device, compile_backend=profile.compile_backend)


def baseline_thunk(profile, case_name, baseline):
    """Measures a baseline when its own benchmark did not run first (e.g. under -k selection)."""
    if skip_reason(profile, baseline, case_name):
        return None

    def measure():
        case = case_for(profile, case_name)
        engine = _build(profile, baseline, case)
        return median_seconds(engine, *_engine_rounds(profile, baseline), profile.device)

    return measure


def test_train_step(benchmark, bench_profile, recorder, case_name, engine_name):
    profile = bench_profile
    reason = skip_reason(profile, engine_name, case_name)
    if reason:
        pytest.skip(reason)
    case = case_for(profile, case_name)
    reset_peak_memory(profile.device)
    engine = _build(profile, engine_name, case)
    rounds, warmup = _engine_rounds(profile, engine_name)
    baselines = {name: baseline_thunk(profile, case_name, name) for name in earlier_baselines(engine_name, BASELINES)}
    try:
        record = recorder.measure(
            benchmark,
            f"train/{case_name}",
            engine_name,
            engine.step,
            rounds=rounds,
            warmup=warmup,
            work={"tokens": case.tokens_per_step, "puzzles": case.batch_size, "flops": case.train_flops},
            baselines=baselines,
            extra={
                "peak_memory_bytes": None,
                "batch_size": case.batch_size,
                "micro_batch_size": engine.train_step.micro_batch_size,
                "op_backends": op_backends(ENGINE_SPECS[engine_name], profile.device),
                "compile_backend": profile.compile_backend if ENGINE_SPECS[engine_name].compiled else None,
            },
        )
        peak = peak_memory_bytes(profile.device)
        record.values["peak_memory_bytes"] = peak
        for name in BASELINES:
            base = recorder.get(f"train/{case_name}", name)
            if peak and base is not None and base.values.get("peak_memory_bytes"):
                record.values[f"memory_ratio_vs_{name}"] = peak / base.values["peak_memory_bytes"]
        benchmark.extra_info.update(record.values)
        # A step must produce finite losses, or the timing measured a broken engine.
        assert bool(engine.step().isfinite().all()), f"{engine_name}: non-finite metrics"
    finally:
        teardown(engine, profile.device)
