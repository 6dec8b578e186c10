"""Benchmark set-up: the session's size profile (bench/profiles.py) and ratio recording.

Every measurement goes through the `recorder` fixture: it times the function with
`benchmark.pedantic` (bench/timing.py times each call), states its ratio to the baselines measured in
the same run (in the benchmark's extra_info), prints a summary table at the end and, with
TRM_BENCH_RESULTS=<file>, writes every record to that JSON file (what bench/report reads).
No absolute CPU time is a result: on CPU only the ratios mean anything (and those of the Triton
engine, which runs in its interpreter there, do not).
"""
from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass
from typing import Callable, Optional

import pytest
import torch

from bench.profiles import Profile, session_profile
from bench.timing import device_seconds
from trm_fast.flops import model_flop_utilisation, peak_flops
from trm_fast.ops._backend import triton_interpreter_on

RESULTS_ENV = "TRM_BENCH_RESULTS"


# ----------------------------------------------------------------------------- recording
def _median_seconds(seconds: list[float]) -> float:
    return statistics.median(seconds)


@dataclass
class Record:
    group: str  # e.g. "train/sudoku_mlp", "ops/rms_norm_residual/fwd"
    variant: str  # the engine or implementation
    seconds: float  # median wall time of one call
    values: dict  # rates, ratios, memory, backends...

    def as_dict(self) -> dict:
        return {"group": self.group, "variant": self.variant, "seconds": self.seconds, **self.values}


class Recorder:
    """Times each benchmark and states its ratios to the baselines of its group measured in this run."""

    def __init__(self, profile: Profile):
        self.profile = profile
        self.records: dict[tuple[str, str], Record] = {}
        self.device_name = torch.cuda.get_device_name(profile.device) if profile.on_gpu else "cpu"
        self.peak = peak_flops(self.device_name, "bfloat16" if profile.dtype == torch.bfloat16 else "float32")

    def get(self, group: str, variant: str) -> Optional[Record]:
        return self.records.get((group, variant))

    def measure(
        self,
        benchmark,
        group: str,
        variant: str,
        fn: Callable[[], object],
        *,
        rounds: Optional[int] = None,
        warmup: Optional[int] = None,
        work: Optional[dict] = None,
        baselines: Optional[dict[str, Optional[Callable[[], Optional[float]]]]] = None,
        extra: Optional[dict] = None,
    ) -> Record:
        """Time `fn` (it synchronises the device itself) and record it.

        work: amounts done by one call: tokens, puzzles, flops, bytes -> per-second rates (and MFU).
        baselines: name -> None, or a thunk measuring that baseline's seconds when its own benchmark
        has not run yet in this session; each gives ratio_vs_<name> = baseline seconds / seconds.
        """
        rounds = self.profile.rounds if rounds is None else rounds
        warmup = self.profile.warmup if warmup is None else warmup
        seconds: list[float] = []

        def timed():
            seconds.extend(device_seconds(fn, self.profile.device))

        if benchmark.disabled:  # pedantic then makes one call and no warm-up: do ours first
            for _ in range(warmup):
                fn()
        benchmark.pedantic(timed, rounds=rounds, warmup_rounds=warmup, iterations=1)
        return self.record(benchmark, group, variant, seconds[-rounds:], work=work, baselines=baselines, extra=extra)

    def record(
        self,
        benchmark,
        group: str,
        variant: str,
        seconds: list[float],
        *,
        work: Optional[dict] = None,
        baselines: Optional[dict[str, Optional[Callable[[], Optional[float]]]]] = None,
        extra: Optional[dict] = None,
    ) -> Record:
        """Record timings measured by the caller (`measure` times one function itself): the median of
        `seconds`, rates from `work` and ratios to `baselines` (see `measure`)."""
        median = _median_seconds(seconds)
        values = dict(extra or {})
        values["rounds"] = len(seconds)
        for amount, rate in (("tokens", "tokens_per_s"), ("puzzles", "puzzles_per_s"), ("flops", "flop_per_s"), ("bytes", "bytes_per_s")):
            if work and work.get(amount):
                values[amount] = work[amount]
                values[rate] = work[amount] / median
        if work and work.get("flops") and self.profile.on_gpu:
            values["mfu"] = model_flop_utilisation(work["flops"], median, self.peak)
        for name, thunk in (baselines or {}).items():
            base = self.get(group, name)
            base_seconds = base.seconds if base is not None else (thunk() if thunk is not None else None)
            values[f"ratio_vs_{name}"] = None if base_seconds is None else base_seconds / median
            if base is not None and base.values.get("peak_memory_bytes") and values.get("peak_memory_bytes"):
                values[f"memory_ratio_vs_{name}"] = values["peak_memory_bytes"] / base.values["peak_memory_bytes"]
        record = Record(group, variant, median, values)
        self.records[(group, variant)] = record
        if benchmark is not None:  # None: the caller files several records under one benchmark itself
            benchmark.extra_info.update({k: v for k, v in record.as_dict().items() if k not in ("group", "variant")})
        self.save()  # after every record, so a run cut short by a time limit still leaves its figures
        return record

    def save(self) -> None:
        path = os.environ.get(RESULTS_ENV)
        if path:
            with open(path, "w") as handle:
                json.dump(self.as_json(), handle, indent=1, default=str)

    def as_json(self) -> dict:
        return {
            "profile": self.profile.name,
            "device": self.device_name,
            "dtype": str(self.profile.dtype).replace("torch.", ""),
            "compile_backend": self.profile.compile_backend,
            "triton_interpreter": triton_interpreter_on(),
            "peak_flops": self.peak,
            "notes": self.profile.notes,
            "records": [record.as_dict() for record in self.records.values()],
        }


def format_summary(records: list[dict], absolute: bool) -> list[str]:
    """One line per record: group, variant, time (only when `absolute`: GPU), ratios, headline rates."""
    lines = [f"{'group':34s} {'variant':22s} {'ms' if absolute else '':>9s}  ratios" + (" / rates" if absolute else "")]
    for record in records:
        parts = []
        for key, value in record.items():
            if value is None:
                continue
            if key.startswith(("ratio_vs_", "memory_ratio_vs_")):
                parts.append(f"{key.replace('ratio_vs_', 'x')}={value:.2f}")
            elif key == "bandwidth_vs_copy":
                parts.append(f"bw/copy={value:.2f}")
            elif key == "mfu" and absolute:
                parts.append(f"MFU={100 * value:.1f}%")
            elif key == "puzzles_per_s" and absolute:
                parts.append(f"puzzles/s={value:.4g}")
        ms = f"{1e3 * record['seconds']:9.3f}" if absolute else " " * 9
        lines.append(f"{record['group']:34s} {record['variant']:22s} {ms}  {' '.join(parts)}")
    return lines


# ----------------------------------------------------------------------------- pytest wiring
_RECORDER: Optional[Recorder] = None


@pytest.fixture(scope="session")
def bench_profile() -> Profile:
    return session_profile()


@pytest.fixture(scope="session")
def recorder(bench_profile) -> Recorder:
    global _RECORDER
    if _RECORDER is None:
        _RECORDER = Recorder(bench_profile)
    return _RECORDER


def pytest_generate_tests(metafunc):
    from bench._engines import ENGINE_NAMES

    profile = session_profile()
    if "case_name" in metafunc.fixturenames:
        metafunc.parametrize("case_name", profile.case_names)
    if "engine_name" in metafunc.fixturenames:
        metafunc.parametrize("engine_name", ENGINE_NAMES)  # baselines first: they are measured first


def pytest_terminal_summary(terminalreporter):
    if _RECORDER is None or not _RECORDER.records:
        return
    from bench.report.summary import derive_ratios

    records = derive_ratios([record.as_dict() for record in _RECORDER.records.values()])
    terminalreporter.section(f"trm-fast benchmarks ({_RECORDER.profile.name} profile, {_RECORDER.device_name})")
    for line in _RECORDER.profile.notes + format_summary(records, absolute=_RECORDER.profile.on_gpu):
        terminalreporter.write_line(line)


def pytest_sessionfinish(session):
    if _RECORDER is not None:
        _RECORDER.save()
