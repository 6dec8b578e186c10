"""Test set-up shared by every test module.

Without a GPU, Triton kernels run under Triton's interpreter; it must be switched on before triton
is first imported, which is why this happens here, before any test module is collected.
"""
import os

import pytest

if os.environ.get("TRITON_INTERPRET") is None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if not has_cuda:
        os.environ["TRITON_INTERPRET"] = "1"

os.environ.setdefault("OMP_NUM_THREADS", "2")


def _interpreter_needs_older_numpy() -> str | None:
    """Triton <= 3.6's interpreter turns 1-element arrays into Python ints, which NumPy >= 2.4 refuses."""
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        return None
    try:
        import numpy
        import triton
    except ImportError:
        return None
    triton_version = tuple(int(part) for part in triton.__version__.split(".")[:2])
    numpy_version = tuple(int(part) for part in numpy.__version__.split(".")[:2])
    if triton_version <= (3, 6) and numpy_version >= (2, 4):
        return (f"Triton {triton.__version__}'s interpreter does not work with NumPy {numpy.__version__}: "
                "install numpy<2.4 or triton>=3.7 to run the kernel tests on CPU")
    return None


def pytest_configure(config):
    problem = _interpreter_needs_older_numpy()
    if problem:
        raise pytest.UsageError(problem)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
