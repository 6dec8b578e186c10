"""Benchmark size profiles: paper shapes on GPU, tiny on CPU (TRM_BENCH_PROFILE overrides the choice).

    gpu   a CUDA device: paper shapes in bf16, every engine, every config, plain ops also compiled
    cpu   no GPU (CI): scaled-down fp32 shapes; the costly paths (inductor compiles, Triton's
          interpreter) run on one config / one op only, so `pytest bench/` stays under 5 min on 2 cores
    tiny  the smallest smoke run (`python -m bench.report --tiny`): one config, every engine once,
          compiles with the aot_eager backend (traced by dynamo, no C++ build)

The pytest benchmarks (bench/conftest.py) and the GPU report's tasks (bench/report/tasks.py) both
read their sizes from here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import pytest
import torch

PROFILE_ENV = "TRM_BENCH_PROFILE"
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


_SESSION_PROFILE: Optional[Profile] = None


def session_profile() -> Profile:
    """The profile of this process (chosen once: pytest collection and the fixtures share it)."""
    global _SESSION_PROFILE
    if _SESSION_PROFILE is None:
        _SESSION_PROFILE = make_profile()
    return _SESSION_PROFILE
