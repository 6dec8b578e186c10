"""`python -m bench.report` under pressure: a task that never returns is stopped at the budget and what
does not fit is recorded as skipped; a report killed mid-run keeps every line written before the kill,
and `--summarise` rebuilds the table from them."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.report import main

REPO_ROOT = Path(__file__).resolve().parents[1]


def report_env(faults: str, tmp_path: Path) -> dict:
    # TMPDIR: the report's scratch folder (removed at its end; a killed report leaves it in tmp_path).
    return dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1", TRM_REPORT_FAULT=faults,
                TMPDIR=str(tmp_path))


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def log_text(out: Path) -> str:
    return (out / "log.txt").read_text() if (out / "log.txt").exists() else ""


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (ended, not yet reaped) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def test_a_hung_task_is_stopped_at_the_budget_and_the_rest_is_skipped(tmp_path):
    out = tmp_path / "report"
    begin = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "-m", "bench.report", "--tiny", "--out", str(out), "--budget-s", "12",
         "--only", "step/maze_att/reference,step/maze_att/fast_torch"],
        cwd=REPO_ROOT, env=report_env("step/maze_att/reference=hang", tmp_path), capture_output=True, text=True, timeout=120,
    )
    elapsed = time.monotonic() - begin
    assert completed.returncode == 1, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert elapsed < 12 + 30  # the budget holds: the hung worker was killed at the deadline
    records = read_lines(out / "results.jsonl")
    assert records[0]["kind"] == "environment" and records[-1]["kind"] == "run_end"
    tasks = {r["task"]: r for r in records if r["kind"] == "task"}
    hung = tasks["step/maze_att/reference"]
    assert hung["status"] == "timeout" and "the budget left" in hung["error"]
    assert any("[fault hook]" in line for line in hung["output_tail"])
    assert not process_alive(hung["pid"])
    assert tasks["step/maze_att/fast_torch"]["status"] == "skipped_for_budget"
    text = (out / "LATEST.md").read_text()
    assert "`step/maze_att/reference`: **timeout**" in text and "skipped for budget: `step/maze_att/fast_torch`" in text


def test_a_killed_report_keeps_its_lines_and_summarise_rebuilds_the_table(tmp_path):
    out = tmp_path / "report"
    report = subprocess.Popen(
        [sys.executable, "-m", "bench.report", "--tiny", "--out", str(out),
         "--only", "step/maze_att/reference,step/sudoku_mlp/reference"],
        cwd=REPO_ROOT, env=report_env("step/sudoku_mlp/reference=hang", tmp_path), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:  # until the maze step is written and the sudoku one hangs
            tasks = [r for r in read_lines(out / "results.jsonl") if r.get("kind") == "task"]
            if any(t["task"] == "step/maze_att/reference" for t in tasks) and "[fault hook]" in log_text(out):
                break
            assert report.poll() is None, "the report ended before it could be killed"
            time.sleep(0.2)
        time.sleep(1.0)
        os.killpg(report.pid, signal.SIGKILL)  # as the device's time limit would
        report.wait(timeout=30)
    finally:
        if report.poll() is None:
            os.killpg(report.pid, signal.SIGKILL)
    records = read_lines(out / "results.jsonl")  # every line is whole: each was written in one go, then synced
    assert records[0]["kind"] == "environment"
    assert not any(r["kind"] == "run_end" for r in records)
    steps = [r for r in records if r["kind"] == "step"]
    assert [(r["case"], r["engine"]) for r in steps] == [("maze_att", "reference")]
    worker_pid = int(log_text(out).split("[report] worker ")[-1].split()[0])  # the hung one, started last
    end = time.monotonic() + 10
    while process_alive(worker_pid) and time.monotonic() < end:  # the workers die with the report
        time.sleep(0.2)
    assert not process_alive(worker_pid)

    assert main(["--summarise", str(out)]) == 0
    text = (out / "LATEST.md").read_text()
    assert "the run did not finish" in text
    assert "## Training step: maze_att" in text and "| reference |" in text
