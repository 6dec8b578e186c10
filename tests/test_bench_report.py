"""`python -m bench.report`: its pieces (plan, pytest parsing, ratios, markdown, correctness checks) and the
--tiny dry run end to end, with a crash and a failing baseline injected (tests/test_bench_report_faults.py
has the budget, the time limit and a killed report)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.report.plan import BUILD_TASK, PARTS, build_plan, estimate_by_part
from bench.report.tasks import TASKS, bench_case, compare_engines, compare_op, relative_error
from bench.report.worker import fault_actions
from bench.report import (
    add_ratios,
    check_targets,
    derive_ratios,
    device_slug,
    load_results,
    main,
    markdown,
    parse_junit,
    parse_pytest_output,
    select,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def report_env(**extra) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1", **extra)


# ----------------------------------------------------------------------------- the plan
def test_plan_follows_the_issue_order_and_isolates_risky_code():
    plan = build_plan(tiny=False)
    ids = [task.id for task in plan]
    assert len(ids) == len(set(ids))
    assert ids[0] == "env"
    foreground = [task.part for task in plan if not task.background]
    assert foreground == sorted(foreground)  # most valuable first: parts in the issue's order
    assert all(task.fn in TASKS for task in plan if task.fn is not None)
    steps = {task.id: task for task in plan if task.id.startswith("step/maze_att/")}
    baseline_process = steps["step/maze_att/reference"].process
    for name, task in steps.items():
        risky = any(word in name for word in ("triton", "cuda", "graphs"))
        assert (task.process == baseline_process) == (not risky and "compiled" not in name), name
    assert list(steps)[-1] == "step/maze_att/reference_compiled"  # the costliest compile last in its part
    by_id = {task.id: task for task in plan}
    assert by_id["attention/triton"].process != by_id["attention/sdpa_flash"].process
    assert by_id[BUILD_TASK].background and all(BUILD_TASK in t.after for t in plan if t.needs_build)
    # Sized for the 8-minute budget: parts 1-6 by the H200 estimates; part 8 runs if time is left.
    estimate = estimate_by_part(plan)
    assert sum(estimate[part] for part in range(1, 7)) <= 480
    assert set(estimate) == set(PARTS)
    tiny = build_plan(tiny=True)
    assert {task.id for task in tiny} <= set(ids) and all(task.args["tiny"] for task in tiny)


def test_select_keeps_the_environment_and_dependencies():
    chosen = [task.id for task in select(build_plan(), "step/maze_att/fast_cuda")]
    assert chosen == ["env", BUILD_TASK, "step/maze_att/fast_cuda"]


def test_fault_hook_parsing():
    spec = "step/*/reference=fail; correctness/maze_att/torch=exit;env=sleep:2"
    assert fault_actions("step/maze_att/reference", spec) == ["fail"]
    assert fault_actions("correctness/maze_att/torch", spec) == ["exit"]
    assert fault_actions("env", spec) == ["sleep:2"]
    assert fault_actions("step/maze_att/fast_torch", spec) == []


# ----------------------------------------------------------------------------- pytest output
def test_pytest_results_from_verbose_output_xdist_and_serial():
    lines = [
        "[gw0] [  1%] PASSED tests/ops/test_a_gpu.py::test_one[bf16]",
        "[gw1] [  2%] FAILED tests/ops/test_a_gpu.py::test_two",
        "tests/ops/test_b_gpu.py::test_three SKIPPED (needs a CUDA device)     [  3%]",
        "tests/ops/test_b_gpu.py::test_four PASSED                             [  4%]",
        "tests/ops/test_b_gpu.py::test_four ERROR                              [  4%]",  # teardown error
        "collected 170 items",
    ]
    summary = parse_pytest_output(lines)
    assert (summary["passed"], summary["failed"], summary["errors"], summary["skipped"]) == (1, 1, 1, 1)
    assert summary["tests"] == 4 and summary["source"] == "output"
    assert summary["failed_tests"] == ["tests/ops/test_a_gpu.py::test_two", "tests/ops/test_b_gpu.py::test_four"]


def test_pytest_results_from_junit(tmp_path):
    assert parse_junit(tmp_path / "missing.xml") is None
    (tmp_path / "cut.xml").write_text("<testsuites><testsuite><testcase")
    assert parse_junit(tmp_path / "cut.xml") is None  # a killed run's half-written file
    (tmp_path / "ok.xml").write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.a" name="t1"/>'
        '<testcase classname="tests.a" name="t2"><failure message="x"/></testcase>'
        '<testcase classname="tests.a" name="t3"><skipped message="y"/></testcase>'
        "</testsuite></testsuites>"
    )
    summary = parse_junit(tmp_path / "ok.xml")
    assert (summary["passed"], summary["failed"], summary["skipped"], summary["tests"]) == (1, 1, 1, 3)
    assert summary["failed_tests"] == ["tests.a::t2"]


# ----------------------------------------------------------------------------- ratios and markdown
def test_derive_ratios_bandwidth_against_copy():
    """The pytest benchmarks' records (bench/conftest.py's summary)."""
    records = [
        {"group": "ops/copy/fwd", "variant": "plain", "seconds": 1.0, "bytes_per_s": 200.0},
        {"group": "ops/add_streams/fwd", "variant": "fused_triton", "seconds": 1.0, "bytes_per_s": 150.0},
        {"group": "ops/attention/fwd", "variant": "plain", "seconds": 1.0, "flop_per_s": 5.0},
    ]
    derived = {r["group"]: r for r in derive_ratios(records)}
    assert derived["ops/add_streams/fwd"]["bandwidth_vs_copy"] == pytest.approx(0.75)
    assert "bandwidth_vs_copy" not in derived["ops/attention/fwd"]


def _gpu_records(with_reference: bool) -> list[dict]:
    env = {"kind": "environment", "device": "NVIDIA H200", "device_count": 1, "tiny": False, "torch": "2.11",
           "run": {"started": "2026-12-01T10:00:00", "git_commit": "abc"}}
    records = [env,
               {"kind": "ceiling", "name": "matmul", "dtype": "bfloat16", "shape": [8192] * 3, "flop_per_s": 800e12},
               {"kind": "ceiling", "name": "copy", "bytes_per_s": 4e12}]
    if with_reference:
        records.append({"kind": "step", "case": "maze_att", "engine": "reference", "seconds": 3.0, "batch_size": 768,
                        "micro_batch_size": 384, "dtype": "bfloat16", "max_memory_allocated": 100 * 2**30,
                        "flop_per_s": 100e12})
        records.append({"kind": "task", "task": "step/maze_att/reference", "part": 3, "status": "ok", "wall_s": 9.0})
    else:
        records.append({"kind": "task", "task": "step/maze_att/reference", "part": 3, "status": "failed", "wall_s": 4.0,
                        "error": "Traceback (most recent call last):\n  ...\nRuntimeError: CUDA error: an illegal memory access",
                        "output_tail": ["loading", "RuntimeError: CUDA error: an illegal memory access"]})
    records += [
        {"kind": "step", "case": "maze_att", "engine": "fast_triton", "seconds": 1.0, "batch_size": 768,
         "micro_batch_size": 384, "dtype": "bfloat16", "max_memory_allocated": 50 * 2**30, "flop_per_s": 300e12,
         "mfu_spec": 0.3, "tokens_per_s": 7e5},
        {"kind": "task", "task": "step/maze_att/fast_triton", "part": 3, "status": "ok", "wall_s": 8.0, "new_process": True},
        {"kind": "op_bandwidth", "op": "copy", "pass": "fwd", "variant": "plain", "seconds": 1e-3, "bytes_per_s": 2e12},
        {"kind": "op_bandwidth", "op": "swiglu", "pass": "fwd", "variant": "plain", "seconds": 2e-3, "bytes_per_s": 1e12},
        {"kind": "op_bandwidth", "op": "swiglu", "pass": "fwd", "variant": "fused_triton", "seconds": 1e-3, "bytes_per_s": 2e12},
        {"kind": "task", "task": "step/sudoku_mlp/reference_compiled", "part": 4, "status": "skipped_for_budget"},
    ]
    return records


def test_ratios_come_from_the_same_run_and_a_failed_baseline_leaves_the_fast_figures():
    derived = {(r.get("kind"), r.get("engine") or r.get("variant")): r for r in add_ratios(_gpu_records(True))}
    fast = derived[("step", "fast_triton")]
    assert fast["ratio_vs_reference"] == pytest.approx(3.0) and fast["memory_ratio_vs_reference"] == pytest.approx(0.5)
    assert fast["ratio_vs_reference_compiled"] is None  # that baseline did not run: ratio missing, record kept
    assert fast["mfu_measured"] == pytest.approx(300 / 800)
    fused = derived[("op_bandwidth", "fused_triton")]
    assert fused["ratio_vs_plain"] == pytest.approx(2.0) and fused["bandwidth_vs_copy"] == pytest.approx(1.0)
    assert fused["bandwidth_vs_ceiling"] == pytest.approx(0.5)

    text = markdown(_gpu_records(False))
    row = next(line for line in text.splitlines() if line.startswith("| fast_triton |"))
    cells = [cell.strip() for cell in row.split("|")[1:-1]]
    assert cells[1] == "1000.0" and cells[4] == "–"  # ms kept; x reference missing
    assert "| reference | **failed** |" in text
    assert "## Failures (1)" in text and "CUDA error: an illegal memory access" in text
    assert "skipped for budget: `step/sudoku_mlp/reference_compiled`" in text
    assert "the run did not finish" in text  # no run_end line


def test_targets_pick_the_best_fast_engine_and_judge_it():
    records = add_ratios(_gpu_records(True) + [
        {"kind": "step", "case": "maze_att", "engine": "reference_compiled", "seconds": 1.6},
        {"kind": "step", "case": "maze_att", "engine": "fast_cuda", "seconds": 1.5, "mfu_spec": 0.2},
    ])
    targets = {t["target"].split(": ")[1]: t for t in check_targets(records, on_gpu=True) if "maze" in t["target"]}
    assert "(fast_triton)" in next(t["target"] for t in check_targets(records, True) if "maze" in t["target"])
    assert targets["step vs reference_compiled"]["value"] == pytest.approx(1.6) and targets["step vs reference_compiled"]["met"]
    assert targets["step vs reference eager"]["met"] is True  # 3.0 >= 2.5
    assert targets["MFU"]["met"] is False  # 0.3 < 0.5
    assert targets["peak memory vs reference"]["met"] is True  # 0.5 <= 0.6
    sudoku = [t for t in check_targets(records, on_gpu=True) if "sudoku" in t["target"]]
    assert sudoku and all(t["met"] is None for t in sudoku)  # not measured is not "met"


def test_a_line_cut_by_a_kill_is_skipped(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({"kind": "environment", "device": "cpu"}) + "\n" + '{"kind": "step", "case": "ma')
    records = load_results(path)
    assert records[0]["kind"] == "environment" and records[-1] == {"kind": "unreadable_lines", "count": 1}
    assert "1 unreadable line(s)" in markdown(records)


def test_device_slug():
    assert device_slug("NVIDIA H200") == "nvidia-h200"
    assert device_slug("cpu (x86_64)") == "cpu"


# ----------------------------------------------------------------------------- correctness checks
def test_relative_error():
    expected = torch.tensor([1.0, -4.0, 2.0])
    assert relative_error(expected.clone(), expected) == 0.0
    assert relative_error(expected + torch.tensor([0.0, 0.4, 0.0]), expected) == pytest.approx(0.1)
    assert relative_error(torch.tensor([float("nan"), 0, 0]), expected) == math.inf
    assert relative_error(expected[:2], expected) == math.inf


def test_compare_engines_torch_backend_fp32_and_the_bf16_floor():
    config = bench_case("maze_att", tiny=True).config
    result = compare_engines(config, "torch", torch.device("cpu"), batch_size=2)
    assert result["within_tolerance"] and result["halted_agree"]
    assert set(result["errors"]) == {"logits", "q_halt", "q_continue", "y_answer", "z_latent", "loss"}
    assert "puzzle_rows" in result["grad_errors"] and len(result["grad_errors"]) >= 8
    assert result["max_grad_error"] < 1e-4 and "noise_floor" not in result
    import dataclasses

    bf16 = compare_engines(dataclasses.replace(config, forward_dtype="bfloat16"), "torch", torch.device("cpu"), 2)
    assert bf16["dtype"] == "bfloat16" and bf16["noise_floor"]["max_grad_error"] > 0  # bf16 costs precision
    assert set(bf16["errors_vs_fp32"]["errors"]) == set(bf16["errors"])


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(), reason="no Triton here")
def test_compare_op_triton_kernel_matches_the_plain_op():
    from bench.report.tasks import Context

    ctx = Context(lambda record: None, tiny=True)
    result = compare_op(ctx.op_cases["rms_norm_residual_inject"], "triton", ctx.device)
    assert result["within_tolerance"] and set(result["errors"]) >= {"out 0", "out 1", "grad input0", "grad input3"}


# ----------------------------------------------------------------------------- the dry run
FAULTS = "correctness/sudoku_mlp/torch=exit;step/maze_att/reference=fail"


def test_tiny_dry_run_end_to_end_with_a_crash_and_a_failing_baseline(tmp_path):
    """The whole --tiny plan on CPU, every part through its worker processes, with two injected faults:
    a worker that dies mid-task (a CUDA error's crash) and a baseline that raises. Each is one line with
    its output tail; the next task runs in a fresh process; the fast figures stay, the ratio goes."""
    out = tmp_path / "report"
    completed = subprocess.run([sys.executable, "-m", "bench.report", "--tiny", "--out", str(out)], cwd=REPO_ROOT,
                               env=report_env(TRM_REPORT_FAULT=FAULTS), capture_output=True, text=True, timeout=300)
    assert completed.returncode == 1, completed.stdout[-3000:] + completed.stderr[-3000:]  # 1: failures recorded
    lines = (out / "results.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert records[0]["kind"] == "environment" and records[0]["torch"] == torch.__version__
    assert records[0]["run"]["tiny"] is True and records[-1]["kind"] == "run_end"
    tasks = {r["task"]: r for r in records if r["kind"] == "task"}
    plan = build_plan(tiny=True)
    assert set(tasks) == {task.id for task in plan} and len(tasks) == len(plan)  # one line per task

    crashed = tasks["correctness/sudoku_mlp/torch"]
    assert crashed["status"] == "crashed" and any("[fault hook]" in line for line in crashed["output_tail"])
    failed = tasks["step/maze_att/reference"]
    assert failed["status"] == "failed" and "deliberate failure" in failed["error"]
    assert any("deliberate failure" in line for line in failed["output_tail"])
    assert tasks["correctness/maze_att/triton"]["status"] == "ok"  # the next task ran, in a fresh process
    assert tasks["correctness/maze_att/triton"]["new_process"] and tasks["step/maze_att/fast_torch"]["new_process"]
    by_task = {task.id: task for task in plan}
    for task_id, task in tasks.items():
        if task_id in ("correctness/sudoku_mlp/torch", "step/maze_att/reference"):
            continue
        expected = ("unavailable",) if by_task[task_id].needs_gpu or by_task[task_id].needs_build else ("ok",)
        assert task["status"] in expected, task

    kinds = {r["kind"] for r in records}
    assert kinds >= {"environment", "ceiling", "correctness", "op_correctness", "step", "attention", "op_bandwidth",
                     "gpu_tests", "eval", "task", "run_end"}
    correctness = [r for r in records if r["kind"] == "correctness"]
    assert {(r["case"], r["backend"]) for r in correctness} == {
        ("maze_att", "torch"), ("maze_att", "triton"), ("sudoku_mlp", "triton"), ("maze_att", "triton_fused_linear")}
    assert all(r["within_tolerance"] for r in correctness + [r for r in records if r["kind"] == "op_correctness"])
    steps = {(r["case"], r["engine"]): r for r in records if r["kind"] == "step"}
    assert ("maze_att", "fast_torch") in steps and ("maze_att", "reference") not in steps
    assert ("maze_att", "reference_compiled") in steps and steps[("maze_att", "fast_triton")]["op_backends"]["swiglu"] == "triton"
    gpu_tests = next(r for r in records if r["kind"] == "gpu_tests")
    assert gpu_tests["tests"] > 0 and gpu_tests["skipped"] == gpu_tests["tests"]  # collected, counted, skipped on CPU
    assert any(r["kind"] == "op_bandwidth" and r["variant"] == "plain_compiled" for r in records)

    md_files = sorted(p.name for p in out.glob("*.md"))
    assert md_files == ["LATEST.md", "cpu-" + records[0]["run"]["started"][:10] + ".md"]
    text = (out / "LATEST.md").read_text()
    assert "## Failures (2)" in text and "`step/maze_att/reference`: **failed**" in text
    for section in ("## Correctness: one supervision step", "## Correctness: fused ops", "## Training step: maze_att",
                    "## Training step: sudoku_mlp", "## Attention backends", "## Ops", "## GPU unit tests",
                    "## Evaluation: sudoku_mlp", "## Task timings"):
        assert section in text, section
    maze = text.split("## Training step: maze_att")[1].split("##")[0]
    fast_row = next(line for line in maze.splitlines() if line.startswith("| fast_torch |"))
    assert fast_row.split("|")[5].strip() == "–"  # x reference: the baseline failed, the record stays
    sudoku = text.split("## Training step: sudoku_mlp")[1].split("##")[0]
    sudoku_row = next(line for line in sudoku.splitlines() if line.startswith("| fast_torch |"))
    assert float(sudoku_row.split("|")[5]) > 0
    assert (out / "log.txt").exists()

    # --summarise rebuilds the same table from the lines alone.
    (out / "LATEST.md").unlink()
    assert main(["--summarise", str(out)]) == 0
    assert (out / "LATEST.md").read_text() == text
