"""Installs trm_fast (with the Triton kernels from kernels/ as trm_fast.kernels) and the `trm-fast` script.

The CUDA C++ extension in csrc/ is built here only when a CUDA toolchain and a CUDA build of
PyTorch are present (or TRM_FAST_BUILD_CUDA=1); otherwise it is JIT-compiled on first use.
"""
import os

from setuptools import setup

packages = [
    "trm_fast",
    "trm_fast.ops",
    "trm_fast.model",
    "trm_fast.data",
    "trm_fast.train",
    "trm_fast.kernels",  # lives in ./kernels; never installed as a top-level `kernels`
]
package_dir = {"trm_fast.kernels": "kernels"}

ext_modules, cmdclass = [], {}
if os.environ.get("TRM_FAST_BUILD_CUDA", "0") == "1":
    from torch.utils.cpp_extension import BuildExtension

    from csrc_build import cuda_extension  # noqa: E402  (see csrc_build.py)

    ext_modules = [cuda_extension()]
    cmdclass = {"build_ext": BuildExtension}

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={"trm_fast": ["csrc/*.cu", "csrc/*.cpp", "csrc/*.h"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
