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


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
