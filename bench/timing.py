"""The one timing helper of the benchmarks and the GPU report."""
from __future__ import annotations

import time
from typing import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_seconds(fn: Callable[[], object], device: torch.device, warmup: int = 0, rounds: int = 1,
                   inner: int = 1) -> list[float]:
    """Seconds per call of `fn`: `rounds` figures, each over `inner` back-to-back calls (CUDA events on
    a GPU, so no host sync sits between the calls), after `warmup` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    seconds = []
    for _ in range(rounds):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            seconds.append(start.elapsed_time(end) / 1e3 / inner)
        else:
            begin = time.perf_counter()
            for _ in range(inner):
                fn()
            seconds.append((time.perf_counter() - begin) / inner)
    return seconds


def seconds_each_call(fn: Callable[[], object], device: torch.device, calls: int) -> tuple[list[float], object]:
    """The seconds of each of `calls` calls of `fn` (the first ones pay for compiling and capturing),
    and what the last call returned."""
    last = []

    def call():
        last[:] = [fn()]

    return device_seconds(call, device, rounds=calls), (last[0] if last else None)
