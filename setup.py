"""Installs trm_fast (with the Triton kernels from kernels/ as trm_fast.kernels) and the `trm-fast` script.

The CUDA C++ extension in csrc/ is built here only with TRM_FAST_BUILD_CUDA=1 (needs nvcc and a CUDA
build of PyTorch); otherwise trm_fast.ops.cuda_ext compiles it on first use on a CUDA machine.
"""
import os

from setuptools import setup

packages = [
    "trm_fast",
    "trm_fast.ops",
    "trm_fast.model",
    "trm_fast.data",
    "trm_fast.data.sudoku",
    "trm_fast.puzzles",  # one module per puzzle kind (trm_fast.puzzles.KINDS)
    "trm_fast.train",
    "trm_fast.study",
    "trm_fast.pretrained",  # the shipped models: trm_fast/pretrained/<name>/ (package data below)
    "trm_fast.kernels",  # lives in ./kernels; never installed as a top-level `kernels`
]
package_dir = {"trm_fast.kernels": "kernels"}

# The CUDA sources also ship inside the package (trm_fast/csrc) so an installed copy can JIT-build them.
packages.append("trm_fast.csrc")
package_dir["trm_fast.csrc"] = "csrc"

ext_modules, cmdclass = [], {}
if os.environ.get("TRM_FAST_BUILD_CUDA", "0") == "1":
    # Build trm_fast._cuda now; otherwise trm_fast.ops.cuda_ext builds it on first use.
    import sys

    if "CUDA_HOME" not in os.environ and os.path.isdir("/usr/local/cuda"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"  # read when cpp_extension is imported
    from torch.utils.cpp_extension import BuildExtension

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc"))
    from build_ext import cuda_extension  # noqa: E402  (csrc/build_ext.py)

    ext_modules = [cuda_extension("trm_fast._cuda")]
    cmdclass = {"build_ext": BuildExtension}

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={
        "trm_fast.csrc": ["*.cu", "*.cpp", "*.h"],
        "trm_fast.pretrained": ["*/model.json", "*/model.safetensors", "*/*.csv"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
