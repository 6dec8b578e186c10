"""How the trm_fast CUDA extension is built: one place used by setup.py, the JIT build and the tests.

`cuda_extension()` returns a torch CUDAExtension compiling csrc/ for sm_80 (A100) and sm_90 (H100/H200),
plus compute_90 PTX so newer GPUs can JIT it. Math stays IEEE (no --use_fast_math): the kernels are
memory-bound, and the loss head's log/exp must match the fp64 reference closely.
"""
from __future__ import annotations

from pathlib import Path

CSRC_DIR = Path(__file__).resolve().parent
# Every source in the folder: an op's .cu and _bindings.cpp join the build by being there (the op list
# itself is trm_fast.ops.registry; tests/csrc checks the two agree).
SOURCES = tuple(sorted(path.name for path in CSRC_DIR.iterdir() if path.suffix in (".cpp", ".cu")))
HEADERS = tuple(sorted(path.name for path in CSRC_DIR.glob("*.h")))
ARCH_FLAGS = (
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90,code=sm_90",
    "-gencode=arch=compute_90,code=compute_90",
)


def source_paths() -> list[str]:
    return [str(CSRC_DIR / name) for name in SOURCES]


def compile_args() -> dict[str, list[str]]:
    return {
        # no -std flag: torch's BuildExtension adds the standard its headers need (C++17 or C++20)
        "cxx": ["-O3", "-g0"],  # -g0 overrides the -g in Python's CFLAGS: faster builds, smaller .so
        "nvcc": ["-O3", *ARCH_FLAGS],
    }


def cuda_extension(name: str = "trm_fast._cuda"):
    """The extension for setuptools; `name` is the importable module name of the built .so."""
    from torch.utils.cpp_extension import CUDAExtension

    return CUDAExtension(
        name=name,
        sources=source_paths(),
        include_dirs=[str(CSRC_DIR)],
        extra_compile_args=compile_args(),
    )
