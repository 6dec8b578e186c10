"""Backend selection for the fused ops: the only place that decides torch | triton | cuda.

Order of precedence: an explicit `backend=` argument, then the TRM_FAST_BACKEND environment
variable, then "auto". "auto" picks the best backend that can run on the tensor's device:
cuda (our C++ extension, when built and the op has a CUDA kernel) > triton (on a CUDA device, or
on CPU when Triton's interpreter is switched on) > torch.
"""
from __future__ import annotations

import os

import torch

BACKENDS = ("torch", "triton", "cuda")
ENV_VAR = "TRM_FAST_BACKEND"


class BackendUnavailable(RuntimeError):
    """A backend was forced that cannot run here (e.g. triton without Triton, cuda on CPU)."""


def triton_interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _import_triton() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


_TRITON_IMPORTABLE = _import_triton()


def triton_available() -> bool:
    return _TRITON_IMPORTABLE


def triton_runs_on(device: torch.device) -> bool:
    if not triton_available():
        return False
    return device.type == "cuda" or (device.type == "cpu" and triton_interpreter_on())


def cuda_extension_available() -> bool:
    from trm_fast.ops import cuda_ext  # lazy: importing may trigger a JIT build

    return cuda_ext.available()


def requested_backend(backend: str | None = None) -> str:
    choice = backend or os.environ.get(ENV_VAR) or "auto"
    if choice not in BACKENDS + ("auto",):
        raise ValueError(f"unknown backend {choice!r}: expected one of auto, {', '.join(BACKENDS)}")
    return choice


def resolve(device: torch.device, backend: str | None = None, has_cuda_kernel: bool = False) -> str:
    """The concrete backend an op will run with on `device`."""
    choice = requested_backend(backend)
    if choice == "auto":
        if has_cuda_kernel and device.type == "cuda" and cuda_extension_available():
            return "cuda"
        if triton_runs_on(device):
            return "triton"
        return "torch"
    if choice == "triton" and not triton_runs_on(device):
        raise BackendUnavailable(
            f"backend 'triton' cannot run on {device.type} tensors here "
            "(needs a CUDA device, or TRITON_INTERPRET=1 set before importing triton for CPU)"
        )
    if choice == "cuda":
        if device.type != "cuda":
            raise BackendUnavailable(f"backend 'cuda' needs CUDA tensors, got {device.type} tensors")
        if not has_cuda_kernel:
            # ops without a C++ kernel use the next best GPU path
            return "triton" if triton_runs_on(device) else "torch"
        if not cuda_extension_available():
            raise BackendUnavailable("backend 'cuda' requested but the trm_fast CUDA extension is not built")
    return choice
