"""`python -m bench.report` works end to end (tiny sizes, so it is known to work before a GPU run)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench._engines import ENGINE_SPECS, why_unavailable
from bench.report import check_targets, derive_ratios, device_slug

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_derive_ratios_bandwidth_against_copy():
    records = [
        {"group": "ops/copy/fwd", "variant": "plain", "seconds": 1.0, "bytes_per_s": 200.0},
        {"group": "ops/add_streams/fwd", "variant": "fused_triton", "seconds": 1.0, "bytes_per_s": 150.0},
        {"group": "ops/attention/fwd", "variant": "plain", "seconds": 1.0, "flop_per_s": 5.0},
    ]
    derived = {r["group"]: r for r in derive_ratios(records)}
    assert derived["ops/add_streams/fwd"]["bandwidth_vs_copy"] == pytest.approx(0.75)
    assert derived["ops/copy/fwd"]["bandwidth_vs_copy"] == pytest.approx(1.0)
    assert "bandwidth_vs_copy" not in derived["ops/attention/fwd"]


def test_targets_pick_the_best_fast_engine_and_judge_it():
    records = [
        {"group": "train/maze_att", "variant": "fast_triton", "ratio_vs_reference": 2.0,
         "ratio_vs_reference_compiled": 1.2, "mfu": 0.4, "memory_ratio_vs_reference": 0.5},
        {"group": "train/maze_att", "variant": "fast_triton_graphs", "ratio_vs_reference": 3.0,
         "ratio_vs_reference_compiled": 1.6, "mfu": 0.55, "memory_ratio_vs_reference": 0.7},
    ]
    targets = {t["target"].split(": ")[1]: t for t in check_targets(records, on_gpu=True) if "maze" in t["target"]}
    assert targets["step vs reference_compiled"]["met"] is True and targets["step vs reference_compiled"]["value"] == 1.6
    assert targets["step vs reference eager"]["met"] is True
    assert targets["MFU"]["met"] is True
    assert targets["peak memory vs reference"]["met"] is False  # 0.7 > 0.6
    sudoku = [t for t in check_targets(records, on_gpu=True) if "sudoku" in t["target"]]
    assert sudoku and all(t["met"] is None for t in sudoku)  # not measured is not "met"
    cpu = check_targets([{"group": "train/x", "variant": "fast_torch", "ratio_vs_reference": 0.9}], on_gpu=False)
    assert [t["met"] for t in cpu] == [False]


def test_device_slug():
    assert device_slug("NVIDIA H200") == "nvidia-h200"
    assert device_slug("cpu (x86_64)") == "cpu"


@pytest.mark.slow
def test_report_tiny_run_writes_every_engine_and_ratio(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    command = [sys.executable, "-m", "bench.report", "--tiny", "--out", str(tmp_path)]
    if torch.cuda.is_available():
        command.append("--skip-gpu-tests")  # on a GPU box the GPU suite has its own run; here only on CPU (all skipped)
    completed = subprocess.run(
        command,
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    json_files = list(tmp_path.glob("*.json"))
    md_files = [p for p in tmp_path.glob("*.md") if p.name != "LATEST.md"]
    assert len(json_files) == 1 and len(md_files) == 1 and json_files[0].stem == md_files[0].stem
    report = json.loads(json_files[0].read_text())
    markdown = md_files[0].read_text()

    env_info = report["environment"]
    assert env_info["torch"] == torch.__version__ and "triton" in env_info
    assert isinstance(env_info["op_backends"]["torch"], dict) and env_info["op_backends"]["torch"]["swiglu"] == "torch"
    gpu_tests = report["gpu_tests"]
    if not torch.cuda.is_available():
        assert gpu_tests["returncode"] == 0 and gpu_tests["tests"] > 0
        assert gpu_tests["skipped"] == gpu_tests["tests"]  # collected, counted, skipped without a GPU

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train = {r["variant"]: r for r in report["benchmarks"]["records"] if r["group"] == "train/sudoku_mlp"}
    runnable = [name for name, spec in ENGINE_SPECS.items() if why_unavailable(spec, device) is None]
    assert set(train) == set(runnable)
    for name in runnable:
        record = train[name]
        assert record["seconds"] > 0 and record["op_backends"]["swiglu"] in ("torch", "triton", "cuda")
        assert f"| {name} |" in markdown
        if name != "reference":
            assert record["ratio_vs_reference"] > 0, name
        if name not in ("reference", "reference_compiled"):
            assert record["ratio_vs_reference_compiled"] > 0, name
    assert train["fast_torch"]["op_backends"]["swiglu"] == "torch"
    evaluation = {r["variant"]: r for r in report["benchmarks"]["records"] if r["group"] == "eval/sudoku_mlp"}
    assert {"reference", "fast_torch"} <= set(evaluation) and evaluation["fast_torch"]["ratio_vs_reference"] > 0
    ops = [r for r in report["benchmarks"]["records"] if r["group"].startswith("ops/")]
    fused = [r for r in ops if r["variant"].startswith("fused_")]
    assert fused and all(r["ratio_vs_plain"] > 0 and r["bandwidth_vs_copy"] > 0 for r in fused)
    assert any(r["variant"] == "plain_compiled" for r in ops)
    assert "## Training supervision step: sudoku_mlp" in markdown and "## Ops" in markdown
    assert "## Targets" in markdown
