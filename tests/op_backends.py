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


def compile_aot_specs(kernels_module: str, timeout_s: float = 600) -> int:
    """Compiles every AOT spec of trm_fast.kernels.<kernels_module> for sm_80 and sm_90 in a process
    without Triton's interpreter (it replaces @triton.jit functions at import); the compile count."""
    import os
    import subprocess
    import sys

    script = (
        "import trm_fast\n"
        "from trm_fast.kernels._aot import compile_spec\n"
        f"from trm_fast.kernels.{kernels_module} import AOT_SPECS\n"
        "for spec in AOT_SPECS:\n"
        "    for arch in (80, 90):\n"
        "        assert compile_spec(spec, arch).metadata.num_warps == spec.num_warps\n"
        "print('compiled', 2 * len(AOT_SPECS))\n"
    )
    env = dict(os.environ, TRITON_INTERPRET="0")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout_s)
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stdout.split("compiled")[-1])
