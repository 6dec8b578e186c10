"""Every Triton kernel compiles for sm_80 and sm_90 with the signatures its launcher really uses.

The specs come from each kernels module's AOT_SPECS (discovered automatically). Compilation runs in
a subprocess with TRITON_INTERPRET=0: the interpreter, which conftest.py switches on for CPU-only
machines, replaces @triton.jit functions at import and they could not be compiled in this process.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
ARCHES = ("sm_80", "sm_90")
# Kernels this project's ops depend on; an empty or truncated spec list must fail the test.
REQUIRED_PREFIXES = (
    "rms_norm_residual.fwd",
    "rms_norm_residual.bwd",
    "add_streams",
    "swiglu.fwd",
    "swiglu.bwd",
    "token_rms_norm.fwd",
    "token_rms_norm.bwd",
    "loss_head.fwd",
    "optimizer.adam_atan2_ema",
    "optimizer.sign_sgd_rows",
    "rope",
    "attention",
    "fused_linear",
)


@pytest.fixture(scope="module")
def aot_table():
    env = dict(os.environ, TRITON_INTERPRET="0")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "trm_fast.kernels._aot", "--arch", "80", "90"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    rows = []
    for line in result.stdout.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[1].startswith("sm_"):
            rows.append(cells)
    return result, rows


@pytest.mark.slow
def test_every_kernel_compiles_for_sm80_and_sm90(aot_table):
    result, rows = aot_table
    failed = sorted({f"{cells[0]} ({cells[1]}): {cells[2]}" for cells in rows if cells[2].startswith("FAILED")})
    assert not failed, "kernels that failed to compile:\n" + "\n".join(failed)
    assert result.returncode == 0, f"_aot exited with {result.returncode}:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    compiled = {}
    for name, arch, *_ in rows:
        compiled.setdefault(name, set()).add(arch)
    missing_arch = sorted(name for name, arches in compiled.items() if arches != set(ARCHES))
    assert not missing_arch, f"not compiled for both {ARCHES}: {missing_arch}"


@pytest.mark.slow
def test_specs_cover_every_kernels_module(aot_table):
    _, rows = aot_table
    names = {cells[0] for cells in rows}
    for prefix in REQUIRED_PREFIXES:
        assert any(name.startswith(prefix) for name in names), f"no AOT spec named {prefix}*"
    kernel_modules = sorted(
        path.stem for path in (REPO_ROOT / "kernels").glob("*.py") if not path.stem.startswith("_")
    )
    for module in kernel_modules:
        assert any(name.split(".")[0].split("[")[0] == module for name in names), (
            f"kernels/{module}.py declares no AOT_SPECS (or its names do not start with '{module}')"
        )


def test_spec_names_are_unique():
    from trm_fast.kernels._aot import all_specs

    names = [spec.name for spec in all_specs()]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    assert not duplicates, f"duplicate AOT spec names: {duplicates}"
