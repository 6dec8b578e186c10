"""Op 10 without a GPU: the CUDA extension compiles (sm_80 + sm_90) and imports; `available()` is safe.

The build uses nvcc and a CUDA build of PyTorch (CUDA_HOME defaults to /usr/local/cuda); it cannot run
the kernels here, so their numerics are checked in tests/csrc/test_cuda_ext_gpu.py.
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from trm_fast.ops import cuda_ext
from trm_fast.ops.registry import OPS

CUDA_KERNELS = sorted({entry.cuda_kernel for entry in OPS.values() if entry.cuda_kernel})
EXPORTED = tuple(f"{kernel}_{direction}" for kernel in CUDA_KERNELS for direction in ("fwd", "bwd"))


def _toolchain_missing() -> str | None:
    if torch.version.cuda is None:
        return "PyTorch is a CPU-only build"
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    if shutil.which("nvcc") is None and not (Path(cuda_home) / "bin" / "nvcc").exists():
        return "nvcc not found"
    return None


def test_available_never_raises_and_is_false_without_a_gpu():
    result = cuda_ext.available()
    assert isinstance(result, bool)
    if not torch.cuda.is_available():
        assert result is False


def test_calls_reject_cpu_tensors():
    x = torch.zeros(2, 8)
    with pytest.raises(ValueError, match="rms_norm_residual_fwd: the CUDA extension needs CUDA tensors, got cpu"):
        cuda_ext.run("rms_norm_residual_fwd", x, x, None, None, 1e-5)
    with pytest.raises(ValueError, match="loss_head_fwd: the CUDA extension needs CUDA tensors"):
        cuda_ext.run("loss_head_fwd", torch.zeros(1, 2, 6), torch.zeros(1, 2, dtype=torch.long), torch.zeros(1), -100, True)


def test_every_cuda_kernel_of_the_registry_is_built_and_nothing_else():
    """An op entry with `cuda_kernel` has its kernel, header and binding in csrc/ (which the build takes
    whole), and every op source in csrc/ belongs to an entry."""
    build_ext = cuda_ext._build_ext_module(cuda_ext.csrc_dir())
    op_sources = {name for name in build_ext.SOURCES if name != "bindings.cpp"}
    expected = {f"{kernel}{suffix}" for kernel in CUDA_KERNELS for suffix in (".cu", "_bindings.cpp")}
    assert op_sources == expected
    assert {f"{kernel}.h" for kernel in CUDA_KERNELS} <= set(build_ext.HEADERS)
    for kernel in CUDA_KERNELS:  # the binding exports what cuda_ext.run is asked for
        binding = (cuda_ext.csrc_dir() / f"{kernel}_bindings.cpp").read_text()
        for direction in ("fwd", "bwd"):
            assert f'm.def("{kernel}_{direction}"' in binding, (kernel, direction)


def test_extension_description_targets_sm80_and_sm90():
    build_ext = cuda_ext._build_ext_module(cuda_ext.csrc_dir())
    flags = " ".join(build_ext.compile_args()["nvcc"])
    assert "code=sm_80" in flags and "code=sm_90" in flags
    for source in build_ext.source_paths():
        assert Path(source).exists(), source


@pytest.mark.slow
def test_extension_builds_for_sm80_and_sm90(tmp_path):
    missing = _toolchain_missing()
    if missing:
        pytest.skip(missing)
    so_path = cuda_ext.build(tmp_path / "build")
    assert so_path.exists() and so_path.stat().st_size > 0
    # both architectures' SASS is in the binary
    cuobjdump = shutil.which("cuobjdump") or "/usr/local/cuda/bin/cuobjdump"
    if Path(cuobjdump).exists():
        listing = subprocess.run([cuobjdump, "--list-elf", str(so_path)], capture_output=True, text=True).stdout
        assert "sm_80" in listing and "sm_90" in listing, listing
    module = cuda_ext.load_from(so_path)  # importing needs no GPU
    for name in EXPORTED:
        assert callable(getattr(module, name)), name


def test_available_is_constant_under_torch_compile():
    """Backend dispatch asks available() inside compiled code: it must not break the graph."""
    compiled = torch.compile(lambda x: x * 2 if cuda_ext.available() else x + 1, fullgraph=True, backend="aot_eager")
    expected = 6.0 if cuda_ext.available() else 4.0
    assert compiled(torch.full((2,), 3.0)).tolist() == [expected, expected]
