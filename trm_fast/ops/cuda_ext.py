"""Op 10: the CUDA C++ extension (csrc/) from Python: loading, building on first use, thin wrappers.

The extension is either installed with the package (`TRM_FAST_BUILD_CUDA=1 pip install .` builds
`trm_fast._cuda`) or built on first use into a cache folder (~/.cache/trm_fast, or
$TRM_FAST_CUDA_CACHE) with setuptools in a subprocess: that works without ninja (the GPU image has
none) and uses it when present. TRM_FAST_CUDA_EXT=0 switches the extension off (no build attempts).
`available()` never raises: it is True only with a CUDA device and a loadable extension.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Optional

import torch
from torch import Tensor

from trm_fast.errors import first_line

INSTALLED_MODULE = "trm_fast._cuda"
JIT_MODULE = "trm_fast_cuda_jit"
DISABLE_ENV = "TRM_FAST_CUDA_EXT"
CACHE_ENV = "TRM_FAST_CUDA_CACHE"


# ----------------------------------------------------------------------------- locating and building
def csrc_dir() -> Optional[Path]:
    """The folder with the C++/CUDA sources: the checkout's csrc/ or the copy installed in the package."""
    package_dir = Path(__file__).resolve().parents[1]
    for candidate in (package_dir.parent / "csrc", package_dir / "csrc"):
        if (candidate / "build_ext.py").exists():
            return candidate
    return None


def _build_ext_module(sources: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("trm_fast_csrc_build_ext", sources / "build_ext.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _source_fingerprint(sources: Path) -> str:
    """Changes whenever a source file, torch, CUDA or Python changes: the cache folder's name."""
    digest = hashlib.sha256()
    build_ext = _build_ext_module(sources)
    for name in (*build_ext.SOURCES, *build_ext.HEADERS, "build_ext.py"):
        digest.update(name.encode())
        digest.update((sources / name).read_bytes())
    digest.update(f"{torch.__version__}|{torch.version.cuda}|{sys.version_info[:2]}".encode())
    return digest.hexdigest()[:16]


def default_build_dir() -> Path:
    sources = csrc_dir()
    if sources is None:
        raise FileNotFoundError("trm_fast CUDA sources (csrc/) not found")
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "trm_fast" / "cuda_ext")
    return root / _source_fingerprint(sources)


_BUILD_SCRIPT = """
import sys
sys.path.insert(0, {csrc!r})
from build_ext import cuda_extension
from setuptools import setup
from torch.utils.cpp_extension import BuildExtension
setup(
    name={name!r},
    ext_modules=[cuda_extension({name!r})],
    cmdclass={{"build_ext": BuildExtension.with_options(use_ninja={use_ninja!r})}},
    script_args=["build_ext", "--build-lib", {lib!r}, "--build-temp", {temp!r}],
)
"""


def build(build_dir: Optional[Path] = None, name: str = JIT_MODULE, timeout_s: float = 1800) -> Path:
    """Compile csrc/ into `build_dir` (default: the cache folder); returns the path of the built .so.

    Runs setuptools in a subprocess (a failed compile cannot take the caller down, and its output is
    kept in build.log). CUDA_HOME defaults to /usr/local/cuda when that exists.
    """
    sources = csrc_dir()
    if sources is None:
        raise FileNotFoundError("trm_fast CUDA sources (csrc/) not found")
    build_dir = Path(build_dir) if build_dir is not None else default_build_dir()
    lib_dir, temp_dir = build_dir / "lib", build_dir / "temp"
    lib_dir.mkdir(parents=True, exist_ok=True)
    try:
        import ninja  # noqa: F401

        use_ninja = True
    except ImportError:
        use_ninja = False
    script = _BUILD_SCRIPT.format(csrc=str(sources), name=name, use_ninja=use_ninja, lib=str(lib_dir), temp=str(temp_dir))
    env = dict(os.environ)
    if "CUDA_HOME" not in env and Path("/usr/local/cuda").exists():
        env["CUDA_HOME"] = "/usr/local/cuda"
    log_path = build_dir / "build.log"
    with open(log_path, "w") as log:
        result = subprocess.run(
            [sys.executable, "-c", script], cwd=build_dir, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s
        )
    if result.returncode != 0:
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"building the trm_fast CUDA extension failed (log: {log_path}):\n{tail}")
    built = sorted(lib_dir.glob(f"{name}*.so")) + sorted(lib_dir.glob(f"{name}*.pyd"))
    if not built:
        raise RuntimeError(f"the CUDA extension build produced no module in {lib_dir}")
    return built[0]


def load_from(path: Path, name: str = JIT_MODULE) -> ModuleType:
    """Import a built extension module from its file."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _jit_load() -> ModuleType:
    build_dir = default_build_dir()
    build_dir.mkdir(parents=True, exist_ok=True)
    # One process builds, the others (e.g. torchrun ranks) wait on the lock and load its result.
    import fcntl

    with open(build_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = sorted((build_dir / "lib").glob(f"{JIT_MODULE}*.so"))
        path = built[0] if built else build(build_dir)
    return load_from(path)


@functools.lru_cache(maxsize=None)
def _module() -> Optional[ModuleType]:
    if os.environ.get(DISABLE_ENV, "1") == "0":
        return None
    try:
        return importlib.import_module(INSTALLED_MODULE)
    except ImportError:
        pass
    try:
        return _jit_load()
    except Exception as error:  # no toolchain, compile error, ...: fall back to the other backends
        warnings.warn(f"trm_fast CUDA extension unavailable: {first_line(error)}", RuntimeWarning, stacklevel=2)
        return None


def available() -> bool:
    """True only on a machine with a CUDA device and the extension built (or buildable); never raises."""
    try:
        return torch.cuda.is_available() and _module() is not None
    except Exception:
        return False


# Backend dispatch calls available() inside compiled regions: dynamo must not trace the import/build
# machinery (a graph break under fullgraph=True); the answer cannot change during a process anyway.
if hasattr(torch, "compiler") and hasattr(torch.compiler, "assume_constant_result"):
    available = torch.compiler.assume_constant_result(available)


def _extension() -> ModuleType:
    module = _module() if torch.cuda.is_available() else None
    if module is None:
        raise RuntimeError("the trm_fast CUDA extension is not available (no CUDA device, or it failed to build)")
    return module


# ----------------------------------------------------------------------------- calling it
def run(function: str, *args):
    """The extension's `function` (csrc/<op>_bindings.cpp) on `args`, tensors made contiguous.

    The public ops validate their inputs and call this; the only check here keeps a direct call with
    CPU tensors from loading (or building) the extension before the C++ side would refuse them anyway.
    """
    first = next(arg for arg in args if isinstance(arg, Tensor))
    if first.device.type != "cuda":
        raise ValueError(f"{function}: the CUDA extension needs CUDA tensors, got {first.device} tensors")
    return getattr(_extension(), function)(*(arg.contiguous() if isinstance(arg, Tensor) else arg for arg in args))
