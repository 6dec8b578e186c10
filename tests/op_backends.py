"""What the op tests share: the one skip rule of trm_fast.ops.registry as pytest marks and parameters."""
import pytest

from trm_fast.ops.registry import own_kernel_backends, unavailable_reason


def runs_here(op: str, backend: str = "triton", device: str = "cpu"):
    """Skips unless `op` runs its own `backend` kernel on `device` here (Triton on CPU tensors: only in
    its interpreter, so the CPU cases skip on a GPU machine, where the *_gpu.py tests cover them)."""
    reason = unavailable_reason(op, backend, device)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def gpu_backends(op: str) -> list[str]:
    """torch, then each backend that runs a kernel of `op`'s own on a GPU here: "cuda" only for an op
    with a C++ kernel (elsewhere it would rerun the Triton case) and the extension built."""
    return ["torch"] + [backend for backend in own_kernel_backends(op) if unavailable_reason(op, backend, "cuda") is None]
