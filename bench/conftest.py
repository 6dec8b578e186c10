"""Benchmark set-up: size profile (paper shapes on GPU, tiny on CPU) and ratio recording.

Profiles (environment variable TRM_BENCH_PROFILE overrides the automatic choice):
    gpu   a CUDA device: paper shapes in bf16, every engine, every config, plain ops also compiled
    cpu   no GPU (CI): scaled-down fp32 shapes; the costly paths (inductor compiles, Triton's
          interpreter) run on one config / one op only, so `pytest bench/` stays under 5 min on 2 cores
    tiny  the smallest smoke run (`python -m bench.report --tiny`): one config, every engine once,
          compiles with the aot_eager backend (traced by dynamo, no C++ build)
Every measurement goes through the `recorder` fixture: it times the function with
`benchmark.pedantic`, states its ratio to the baselines measured in the same run (in the
benchmark's extra_info), prints a summary table at the end and, with TRM_BENCH_RESULTS=<file>,
writes every record to that JSON file (what bench/report.py reads).
No absolute CPU time is a result: on CPU only the ratios mean anything (and those of the Triton
engine, which runs in its interpreter there, do not).
"""
from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import pytest
import torch

from trm_fast.flops import model_flop_utilisation, peak_flops
from trm_fast.ops._backend import triton_interpreter_on

PROFILE_ENV = "TRM_BENCH_PROFILE"
RESULTS_ENV = "TRM_BENCH_RESULTS"
COMPILE_BACKEND_ENV = "TRM_BENCH_COMPILE_BACKEND"
CPU_THREADS_ENV = "TRM_BENCH_CPU_THREADS"  # intra-op threads for CPU timings (default 1)


@dataclass
class Profile:
    name: str
    device: torch.device
    dtype: torch.dtype
    rounds: int  # timed calls per measurement
    warmup: int  # untimed calls first (compilation, autotuning, graph capture happen here)
    case_names: tuple[str, ...]  # configs of the step and eval benchmarks
    compiled_cases: tuple[str, ...]  # configs where compiled engines run
    interpreted_cases: tuple[str, ...]  # configs where the Triton engine runs on CPU (interpreter)
    eval_compiled: bool  # reference_compiled in the evaluation benchmark
    compiled_ops: Optional[tuple[str, ...]]  # ops whose plain version is also compiled (None = all)
    interpreted_ops: Optional[tuple[str, ...]]  # ops measured at all (None = all)
    compile_backend: str = "inductor"
    notes: list[str] = field(default_factory=list)

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    def compile(self, fn):
        return torch.compile(fn, backend=self.compile_backend)


def make_profile(name: Optional[str] = None) -> Profile:
    name = name or os.environ.get(PROFILE_ENV) or ("gpu" if torch.cuda.is_available() else "cpu")
    from bench._engines import CASE_NAMES

    if name == "gpu":
        if not torch.cuda.is_available():
            raise pytest.UsageError("TRM_BENCH_PROFILE=gpu needs a CUDA device")
        profile = Profile(
            "gpu", torch.device("cuda"), torch.bfloat16, rounds=5, warmup=3, case_names=CASE_NAMES,
            # Compiled evaluation costs three more compiles (~1.5 min); TRM_BENCH_EVAL_COMPILED=1 adds it.
            compiled_cases=CASE_NAMES, interpreted_cases=CASE_NAMES,
            eval_compiled=os.environ.get("TRM_BENCH_EVAL_COMPILED") == "1", compiled_ops=None,
            interpreted_ops=None,
        )
    elif name == "cpu":
        profile = Profile(
            "cpu", torch.device("cpu"), torch.float32, rounds=3, warmup=1, case_names=CASE_NAMES,
            compiled_cases=("sudoku_mlp",), interpreted_cases=("sudoku_att",), eval_compiled=False,
            compiled_ops=("rms_norm_residual",), interpreted_ops=None,
        )
    elif name == "tiny":
        profile = Profile(
            "tiny", torch.device("cuda" if torch.cuda.is_available() else "cpu"), torch.float32, rounds=1, warmup=1,
            case_names=("sudoku_mlp",), compiled_cases=("sudoku_mlp",), interpreted_cases=("sudoku_mlp",),
            eval_compiled=False, compiled_ops=("rms_norm_residual",),
            interpreted_ops=("copy", "rms_norm_residual", "swiglu"), compile_backend="aot_eager",
        )
    else:
        raise pytest.UsageError(f"{PROFILE_ENV} must be gpu, cpu or tiny, got {name!r}")
    profile.compile_backend = os.environ.get(COMPILE_BACKEND_ENV, profile.compile_backend)
    if not profile.on_gpu:
        profile.notes.append("CPU: only ratios are results; Triton runs in its interpreter (its ratios are not performance)")
        # One intra-op thread by default: on a shared or oversubscribed runner, spinning OpenMP threads
        # make timings swing by 10x; single-threaded ratios are stable and still compare the engines.
        threads = int(os.environ.get(CPU_THREADS_ENV, "1"))
        torch.set_num_threads(threads)
        profile.notes.append(f"CPU: timed with torch.set_num_threads({threads}) ({CPU_THREADS_ENV})")
    return profile


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
            start = time.perf_counter()
            fn()
            seconds.append(time.perf_counter() - start)

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
_PROFILE: Optional[Profile] = None
_RECORDER: Optional[Recorder] = None


def _session_profile() -> Profile:
    global _PROFILE
    if _PROFILE is None:
        _PROFILE = make_profile()
    return _PROFILE


@pytest.fixture(scope="session")
def bench_profile() -> Profile:
    return _session_profile()


@pytest.fixture(scope="session")
def recorder(bench_profile) -> Recorder:
    global _RECORDER
    if _RECORDER is None:
        _RECORDER = Recorder(bench_profile)
    return _RECORDER


def pytest_generate_tests(metafunc):
    from bench._engines import ENGINE_NAMES

    profile = _session_profile()
    if "case_name" in metafunc.fixturenames:
        metafunc.parametrize("case_name", profile.case_names)
    if "engine_name" in metafunc.fixturenames:
        metafunc.parametrize("engine_name", ENGINE_NAMES)  # baselines first: they are measured first


def pytest_terminal_summary(terminalreporter):
    if _RECORDER is None or not _RECORDER.records:
        return
    from bench.report import derive_ratios

    records = derive_ratios([record.as_dict() for record in _RECORDER.records.values()])
    terminalreporter.section(f"trm-fast benchmarks ({_RECORDER.profile.name} profile, {_RECORDER.device_name})")
    for line in _RECORDER.profile.notes + format_summary(records, absolute=_RECORDER.profile.on_gpu):
        terminalreporter.write_line(line)


def pytest_sessionfinish(session):
    if _RECORDER is not None:
        _RECORDER.save()
