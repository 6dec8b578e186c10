"""The run directory: its layout, the metrics writer and reader, and a whole training run's files."""
import json

import pytest

from trm_fast.errors import CheckpointError, RunDirectoryError
from trm_fast.train import run_directory


def test_writers_produce_the_layout_the_readers_expect(tmp_path, tiny_config):
    run_dir = tmp_path / "run"
    cfg = tiny_config("seed=3")
    run_directory.write_config(run_dir, cfg)
    assert run_directory.read_config_values(run_dir)["seed"] == 3 == json.loads((run_dir / "config.json").read_text())["seed"]
    run_directory.append_metrics(run_dir, {"step": 2, "train/lm_loss": 2.0, "elapsed_s": 1.0})
    run_directory.append_metrics(run_dir, {"step": 2, "eval/exact_accuracy": 0.25})
    assert not run_directory.is_finished(run_dir)
    run_directory.write_final_eval(run_dir, 2, {"test/exact_accuracy": 0.5})
    assert run_directory.is_finished(run_dir)
    assert json.loads((run_dir / "final_eval.json").read_text()) == {"step": 2, "test/exact_accuracy": 0.5}
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 2]
    run = run_directory.load_run(run_dir)
    assert run.finished and run.config["seed"] == 3 and run.evals == [records[1]] and run.train == [records[0]]


def test_load_run_resolves_records_a_resumed_run_repeats(tmp_path):
    records = [
        {"step": 2, "train/lm_loss": 2.0, "elapsed_s": 1.0}, {"step": 4, "train/lm_loss": 1.5, "elapsed_s": 2.0},
        {"step": 4, "eval/exact_accuracy": 0.1}, {"step": 6, "train/lm_loss": 1.4, "elapsed_s": 3.0},
        # killed after the checkpoint at step 4; resumed:
        {"step": 6, "train/lm_loss": 1.3, "elapsed_s": 0.5}, {"step": 8, "train/lm_loss": 1.0, "elapsed_s": 1.5},
        {"step": 8, "final": True, "test/exact_accuracy": 0.5},
    ]
    lines = [json.dumps(r) for r in records]
    lines.insert(4, '{"step": 7, "train/lm')  # half-written when killed
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    run = run_directory.load_run(tmp_path)
    assert [(r["step"], r["train/lm_loss"]) for r in run.train] == [(2, 2.0), (4, 1.5), (6, 1.3), (8, 1.0)]
    assert [r["step"] for r in run.evals] == [4] and run.final["test/exact_accuracy"] == 0.5
    assert run.train_seconds == pytest.approx(3.0 + 1.5)


def test_load_runs_expands_a_folder_of_runs_and_names_what_is_missing(tmp_path):
    for name in ("b-seed0", "a-seed0"):
        (tmp_path / "study" / name).mkdir(parents=True)
        run_directory.append_metrics(tmp_path / "study" / name, {"step": 1, "train/lm_loss": 1.0})
    (tmp_path / "study" / "study.json").write_text("{}")
    runs = run_directory.load_runs([tmp_path / "study", tmp_path / "study" / "b-seed0"])
    assert [run.name for run in runs] == ["a-seed0", "b-seed0", "b-seed0"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirectoryError, match=r"empty: no metrics.jsonl"):
        run_directory.load_runs([tmp_path / "empty"])
    (tmp_path / "evals-only").mkdir()
    run_directory.append_metrics(tmp_path / "evals-only", {"step": 1, "eval/exact_accuracy": 0.0})
    with pytest.raises(RunDirectoryError, match="no training records yet"):
        run_directory.load_run(tmp_path / "evals-only")
    (tmp_path / "evals-only" / "config.json").write_text("{")
    with pytest.raises(RunDirectoryError, match="config.json: cannot read"):
        run_directory.read_config_values(tmp_path / "evals-only")


def test_latest_training_record_reads_the_newest_from_the_end(tmp_path):
    assert run_directory.latest_training_record(tmp_path) is None
    for step in range(1, 400):  # more than the 8 KiB read from the end
        run_directory.append_metrics(tmp_path, {"step": step, "train/lm_loss": 1.0 / step})
    run_directory.append_metrics(tmp_path, {"step": 399, "eval/exact_accuracy": 0.5})
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 400, "train/lm')  # being written
    assert run_directory.latest_training_record(tmp_path) == {"step": 399, "train/lm_loss": 1.0 / 399}


def test_checkpoint_to_resume_is_the_newest_or_a_one_line_error(tmp_path):
    with pytest.raises(CheckpointError, match=r"nothing to resume \(no checkpoints/step_\*\.pt\)"):
        run_directory.checkpoint_to_resume(tmp_path)
    for step in (4, 12, 8):
        run_directory.atomic_torch_save({"step": step}, run_directory.checkpoint_path(tmp_path, step))
    assert run_directory.checkpoint_to_resume(tmp_path) == tmp_path / "checkpoints" / "step_00000012.pt"
