"""Makes `trm_fast.kernels` importable from a source checkout.

An installed package maps the repository's top-level kernels/ folder to `trm_fast.kernels`
(setup.py's package_dir). Running from a checkout with PYTHONPATH=. has no such mapping, so we
register the folder under that name ourselves. A top-level `kernels` module is never created:
that import name belongs to the Hugging Face `kernels` package.
"""
import importlib.util
import sys
from pathlib import Path


def ensure_kernels_package() -> None:
    if "trm_fast.kernels" in sys.modules:
        return
    package_dir = Path(__file__).resolve().parent
    if (package_dir / "kernels" / "__init__.py").exists():
        return  # installed layout: regular subpackage
    source_kernels = package_dir.parent / "kernels"
    if importlib.util.find_spec("trm_fast.kernels") is not None:
        return  # an editable install's finder already maps it
    if not (source_kernels / "__init__.py").exists():
        return
    spec = importlib.util.spec_from_file_location(
        "trm_fast.kernels",
        source_kernels / "__init__.py",
        submodule_search_locations=[str(source_kernels)],
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["trm_fast.kernels"] = module
    spec.loader.exec_module(module)
