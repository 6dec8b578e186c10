"""The best periodic evaluation's checkpoint: recorded in best.json, kept beside the newest ones,
carried through a resume, named in metrics.jsonl and final_eval.json, and read by eval --which best."""
import json

import pytest
import torch

from trm_fast import solver
from trm_fast.cli import main
from trm_fast.errors import CheckpointError
from trm_fast.train import run_directory as rd
from trm_fast.train.loop import Trainer, train
from trm_fast.train.losses import METRIC_NAMES

QUIET = dict(progress=False, log=lambda _line: None)


def fake_evaluations(monkeypatch, figures):
    """Periodic evaluations report figures[step] as eval/exact_accuracy; the final one runs for real."""
    real = Trainer.run_evaluation

    def run_evaluation(self, limit, prefix="eval/"):
        if prefix != "eval/":
            return real(self, limit, prefix)
        metrics = {f"eval/{name}": 0.5 for name in METRIC_NAMES}
        metrics.update({"eval/count": 12.0, "eval/exact_accuracy": figures[self.step]})
        return metrics

    monkeypatch.setattr(Trainer, "run_evaluation", run_evaluation)


def steps(run_dir):
    return [step for step, _ in rd.list_checkpoints(run_dir)]


def eval_records(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "eval/exact_accuracy" in r], records[-1]


def test_the_best_evaluation_keeps_its_checkpoint_beside_the_newest(tiny_config, tmp_path, monkeypatch):
    fake_evaluations(monkeypatch, {1: 0.2, 2: 0.6, 3: 0.4, 4: 0.3})
    run_dir, lines = tmp_path / "run", []
    result = train(tiny_config("max_steps=5", "eval_interval=1", "keep_checkpoints=1"), run_dir, progress=False,
                   log=lines.append)
    assert result.step == 5
    assert sum("(best so far)" in line for line in lines) == 2  # steps 1 and 2
    assert lines[-1].startswith("best periodic evaluation: step 2, eval/exact_accuracy 0.6000 (")
    assert lines[-1].endswith(f"trm-fast eval --checkpoint {run_dir} --which best)")
    assert steps(run_dir) == [2, 5]  # the newest one and the best one
    best = json.loads((run_dir / "best.json").read_text())
    assert best == {"step": 2, "metric": "eval/exact_accuracy", "value": 0.6, "file": "checkpoints/step_00000002.pt"}
    assert rd.best_checkpoint(run_dir) == rd.checkpoint_path(run_dir, 2)
    assert rd.load_checkpoint(rd.checkpoint_path(run_dir, 5))["best"] == best
    evals, final = eval_records(run_dir)
    assert [r["eval/best_exact_accuracy"] for r in evals] == [0.2, 0.6, 0.6, 0.6]
    assert [r["eval/best_step"] for r in evals] == [1, 2, 2, 2]
    assert final["final"] is True and final["eval/best_step"] == 2
    assert json.loads((run_dir / "final_eval.json").read_text())["best"] == best
    assert not list(run_dir.glob("*.tmp")) and not list(run_dir.glob(".*.tmp"))


def test_a_best_evaluation_between_checkpoint_steps_saves_one(tiny_config, tmp_path, monkeypatch):
    fake_evaluations(monkeypatch, {2: 0.5, 4: 0.1, 6: 0.9})
    run_dir = tmp_path / "run"
    train(tiny_config("max_steps=7", "eval_interval=2", "checkpoint_interval=4", "keep_checkpoints=1"), run_dir, **QUIET)
    assert steps(run_dir) == [6, 7]  # 6 is no checkpoint step, but the best; 2 went when 6 became the best
    assert rd.read_best(run_dir)["step"] == 6


def test_best_metric_lower_is_better_for_losses(tiny_config, tmp_path, monkeypatch):
    real = Trainer.run_evaluation
    losses = {1: 2.0, 2: 1.0, 3: 1.5}

    def run_evaluation(self, limit, prefix="eval/"):
        metrics = real(self, limit, prefix)
        if prefix == "eval/":
            metrics["eval/lm_loss"] = losses[self.step]
        return metrics

    monkeypatch.setattr(Trainer, "run_evaluation", run_evaluation)
    run_dir = tmp_path / "run"
    train(tiny_config("max_steps=4", "eval_interval=1", "keep_checkpoints=1", "best_metric=lm_loss"), run_dir, **QUIET)
    assert rd.read_best(run_dir) == {"step": 2, "metric": "eval/lm_loss", "value": 1.0, "file": "checkpoints/step_00000002.pt"}
    assert steps(run_dir) == [2, 4]
    evals, _ = eval_records(run_dir)
    assert [r["eval/best_lm_loss"] for r in evals] == [2.0, 1.0, 1.0]


def test_resume_continues_the_best_record(tiny_config, tmp_path, monkeypatch):
    """Killed after step 3 (best at step 2), resumed: the same best and files as a run straight
    through; step 4's 0.3 would be a new best if the record had been lost."""
    fake_evaluations(monkeypatch, {1: 0.2, 2: 0.6, 3: 0.4, 4: 0.3})
    cfg = tiny_config("max_steps=5", "eval_interval=1", "keep_checkpoints=1")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train(cfg, straight, **QUIET)

    original_advance = Trainer.advance

    def die_at_step_4(self, batch):
        if self.step == 3:
            raise RuntimeError("killed")
        return original_advance(self, batch)

    monkeypatch.setattr(Trainer, "advance", die_at_step_4)
    with pytest.raises(RuntimeError, match="killed"):
        train(cfg, killed, **QUIET)
    monkeypatch.setattr(Trainer, "advance", original_advance)
    assert steps(killed) == [2, 3] and rd.read_best(killed)["step"] == 2
    (killed / "best.json").unlink()  # killed between its checkpoint and best.json: the checkpoint knows
    train(cfg, killed, resume=True, **QUIET)

    assert steps(killed) == steps(straight) == [2, 5]
    assert rd.read_best(killed) == rd.read_best(straight)
    assert eval_records(killed)[1]["eval/best_step"] == 2
    a, b = rd.load_checkpoint(rd.checkpoint_path(straight, 5)), rd.load_checkpoint(rd.checkpoint_path(killed, 5))
    assert a["best"] == b["best"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_prune_spares_the_protected_step(tmp_path):
    for step in (5, 10, 15, 20):
        rd.atomic_torch_save({"step": step}, rd.checkpoint_path(tmp_path, step))
    rd.prune_checkpoints(tmp_path, keep=1, protect=10)
    assert steps(tmp_path) == [10, 20]
    rd.prune_checkpoints(tmp_path, keep=1, protect=20)
    assert steps(tmp_path) == [20]


def test_best_record_helpers(tmp_path):
    assert rd.is_better(0.1, None, "exact_accuracy") and not rd.is_better(float("nan"), None, "exact_accuracy")
    best = rd.best_record(3, "eval/exact_accuracy", 0.5)
    assert best["file"] == "checkpoints/step_00000003.pt"
    assert not rd.is_better(0.5, best, "exact_accuracy") and rd.is_better(0.51, best, "exact_accuracy")
    assert rd.is_better(0.4, {**best, "value": 0.5}, "loss") and not rd.is_better(0.6, best, "lm_loss")
    assert rd.read_best(tmp_path) is None and rd.best_checkpoint(tmp_path) is None
    rd.write_best(tmp_path, best)
    assert rd.read_best(tmp_path) == best
    with pytest.raises(CheckpointError, match="step_00000003.pt, which is missing"):
        rd.best_checkpoint(tmp_path)
    (tmp_path / "best.json").write_text("{not json")
    with pytest.raises(rd.RunDirectoryError, match="cannot read"):
        rd.read_best(tmp_path)


def test_eval_which_best_reads_the_best_checkpoint(tiny_config, tmp_path, monkeypatch, capsys):
    fake_evaluations(monkeypatch, {1: 0.2, 2: 0.6, 3: 0.4, 4: 0.3})
    run_dir = tmp_path / "run"
    train(tiny_config("max_steps=5", "eval_interval=1", "keep_checkpoints=1"), run_dir, **QUIET)
    monkeypatch.undo()

    assert solver.find_checkpoint(run_dir) == rd.checkpoint_path(run_dir, 5)
    assert solver.find_checkpoint(run_dir, "best") == rd.checkpoint_path(run_dir, 2)
    found = solver.read_checkpoint(run_dir / "best")  # RUN_DIR/best names it too
    assert found.meta["step"] == 2 and found.chosen.startswith("best: eval/exact_accuracy 0.6000")
    assert "step_00000002.pt" in repr(solver.load(run_dir, which="best", device="cpu", backend="torch"))

    device = ["--device", "cpu", "--backend", "torch"]
    assert main(["eval", "--checkpoint", str(run_dir), "--which", "best", *device, "--limit", "2", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert f"checkpoint {rd.checkpoint_path(run_dir, 2)} (step 2, the run's best: eval/exact_accuracy 0.6000" in out
    assert main(["solve", "--checkpoint", str(run_dir), *device]) == 0
    assert f"checkpoint {rd.checkpoint_path(run_dir, 5)} (step 5, the run's newest)" in capsys.readouterr().out

    with pytest.raises(CheckpointError, match="best checkpoint is chosen in a run directory"):
        solver.find_checkpoint(rd.checkpoint_path(run_dir, 5), "best")
    with pytest.raises(CheckpointError, match="which must be one of newest, best"):
        solver.find_checkpoint(run_dir, "oldest")
    (run_dir / "best.json").unlink()
    assert main(["eval", "--checkpoint", str(run_dir), "--which", "best", *device]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no best.json" in err[0]


def test_ctrl_c_still_says_how_to_resume_and_names_the_best(tiny_config, tmp_path, monkeypatch):
    import signal

    fake_evaluations(monkeypatch, {1: 0.2, 2: 0.6, 3: 0.4})
    original_advance = Trainer.advance

    def step_then_interrupt(self, batch):
        metrics = original_advance(self, batch)
        if self.step == 3:
            signal.raise_signal(signal.SIGINT)
        return metrics

    monkeypatch.setattr(Trainer, "advance", step_then_interrupt)
    run_dir, lines = tmp_path / "run", []
    result = train(tiny_config("max_steps=20", "eval_interval=1", "keep_checkpoints=1"), run_dir, progress=False,
                   log=lines.append)
    assert result.stopped_by == "interrupt" and steps(run_dir) == [2, 3]
    assert lines[-2].startswith("interrupted at step 3; resume with --resume")
    assert lines[-1].startswith("best periodic evaluation: step 2,")
    assert not (run_dir / "final_eval.json").exists() and rd.read_best(run_dir)["step"] == 2
