"""`trm-fast ablate` on a tiny study: outputs, table = metric files, figure objects, resume, errors."""
import json
import shutil
from pathlib import Path

import pytest

from tests.cli_helpers import one_error_line
from trm_fast import config as config_lib
from trm_fast import plots
from trm_fast import study as study_lib
from trm_fast.cli import main

# tests/train/conftest.py's tiny config, with periodic evaluation and checkpoints every 2 steps.
TINY_SETS = [
    "maze.size=6", "maze.num_train=64", "maze.num_test=12", "maze.seed=1", "compile=false",
    "model.hidden_size=32", "model.num_heads=2", "model.puzzle_emb_len=1", "model.halt_max_steps=4",
    "model.forward_dtype=float32",
    "global_batch_size=8", "lr=3e-3", "puzzle_emb_lr=3e-3", "lr_warmup_steps=2", "weight_decay=0.1",
    "puzzle_emb_weight_decay=0.1", "ema_rate=0.9", "log_interval=2", "eval_interval=2", "eval_examples=8",
    "eval_batch_size=8", "checkpoint_interval=2", "device=cpu", "backend=torch", "num_threads=0",
]
VARIANTS = ["deep:model.num_layers=1,model.h_cycles=2,model.l_cycles=2",
            "shallow:model.num_layers=1,model.h_cycles=1,model.l_cycles=1,ema=false"]


def ablate_args(out, data_dir, *extra, variants=VARIANTS, steps=6):
    args = ["ablate", "--out", str(out), "--data-dir", str(data_dir), "--max-steps", str(steps), "--no-progress"]
    for item in TINY_SETS:
        args += ["--set", item]
    for variant in variants:
        args += ["--variant", variant]
    return args + list(extra)


def read_metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """Two variants x 6 steps, trained two at a time in child processes (the --jobs path)."""
    root = tmp_path_factory.mktemp("ablate")
    assert main(ablate_args(root / "study", root / "data", "--jobs", "2")) == 0
    return root


def test_tiny_study_writes_outputs_whose_table_equals_the_metric_files(tiny_study):
    out = tiny_study / "study"
    for name in ("ablation.png", "ablation.md", "ablation.json", "study.json"):
        assert (out / name).is_file(), name
    assert (out / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "ablation.json").read_text())
    markdown = (out / "ablation.md").read_text()
    assert [v["name"] for v in report["variants"]] == ["deep", "shallow"]
    assert report["differing_fields"] == ["model.h_cycles", "model.l_cycles", "ema"]
    assert "initial loss | final loss | improvement | min loss | held-out exact | held-out token" in markdown
    for variant in report["variants"]:
        run_dir = out / f"{variant['name']}-seed0"
        records = read_metrics(run_dir)
        train = [r for r in records if "train/lm_loss" in r]
        final = json.loads((run_dir / "final_eval.json").read_text())
        evals = [r for r in records if "eval/exact_accuracy" in r]
        run = variant["runs"][0]
        losses = [r["train/lm_loss"] for r in train]
        assert run["initial_loss"] == losses[0] and run["final_loss"] == losses[-1] and run["min_loss"] == min(losses)
        assert run["improvement"] == pytest.approx((losses[0] - losses[-1]) / losses[0])
        assert run["heldout_exact"] == final["test/exact_accuracy"] and run["heldout_token"] == final["test/accuracy"]
        assert run["mean_steps"] == train[-1]["train/steps"] and run["train_exact"] == train[-1]["train/exact_accuracy"]
        assert run["curves"]["step"] == [2, 4, 6] and run["curves"]["lm_loss"] == losses
        assert run["heldout_curve"]["step"] == [r["step"] for r in evals] + [6] == [2, 4, 6]
        assert run["heldout_curve"]["exact_accuracy"][-1] == final["test/exact_accuracy"]
        assert run["train_seconds"] == pytest.approx(train[-1]["elapsed_s"])
        assert variant["mean"]["final_loss"] == losses[-1] and variant["std"]["final_loss"] == 0.0
        row = next(line for line in markdown.splitlines() if line.startswith(f"| {variant['name']} |"))
        for text in (f"{losses[0]:.3f}", f"{losses[-1]:.3f}", f"{min(losses):.3f}",
                     f"{100 * final['test/exact_accuracy']:.1f}%", f"{100 * final['test/accuracy']:.2f}%",
                     f"{train[-1]['train/steps']:.2f}", f"{variant['parameters']:,}"):
            assert f" {text} |" in row, (text, row)
    # parameters and FLOPs per supervision step as the trainer / trm_fast.flops count them
    from trm_fast import flops
    from trm_fast.model import TRMConfig, make_model
    from trm_fast.train.run_directory import latest_checkpoint, load_checkpoint

    for variant in report["variants"]:
        payload = load_checkpoint(latest_checkpoint(out / f"{variant['name']}-seed0"))
        model_config = TRMConfig.from_dict(payload["model_config"])
        assert variant["parameters"] == sum(p.numel() for p in make_model(model_config, "reference").parameters())
        assert variant["train_flops_per_step"] == flops.train_step_flops(model_config, 8)
    assert report["variants"][0]["train_flops_per_step"] > report["variants"][1]["train_flops_per_step"]


def test_figure_has_one_line_per_variant_per_panel(tiny_study):
    report = json.loads((tiny_study / "study" / "ablation.json").read_text())
    figure = plots.ablation_figure(report)
    loss_axes, exact_axes = figure.axes
    for axes in (loss_axes, exact_axes):
        lines = axes.get_lines()
        assert len(lines) == 2
        assert [line.get_label().split(" ")[0] for line in lines] == ["deep", "shallow"]
        assert len({(line.get_color(), line.get_linestyle()) for line in lines}) == 2
        assert not axes.collections  # one seed: no band
    deep = report["variants"][0]["runs"][0]
    assert list(loss_axes.get_lines()[0].get_ydata()) == deep["curves"]["lm_loss"]
    assert list(exact_axes.get_lines()[0].get_xdata()) == [2, 4, 6]
    assert "LM loss" in loss_axes.get_ylabel() and "exact" in exact_axes.get_ylabel()


def test_tutorial_variants_keep_the_tutorial_styles():
    styles = plots.variant_styles(["baseline", "no-ema", "less-recursion", "bigger-brain", "mine"])
    assert styles["baseline"] == ("tab:blue", "-") and styles["no-ema"] == ("tab:red", "--")
    assert styles["less-recursion"] == ("tab:green", "-.") and styles["bigger-brain"] == ("m", ":")
    assert styles["mine"][0] not in {s[0] for name, s in styles.items() if name != "mine"}


def test_default_variants_are_the_tutorials_four():
    study = study_lib.make_study(out="unused", cuda_available=False)
    assert [v.name for v in study.variants] == ["baseline", "no-ema", "less-recursion", "bigger-brain"]
    shape = {run.variant.name: (run.config.model.num_layers, run.config.model.h_cycles, run.config.model.l_cycles,
                                run.config.ema) for run in study.runs}
    assert shape == {"baseline": (2, 3, 6, True), "no-ema": (2, 3, 6, False), "less-recursion": (2, 2, 2, True),
                     "bigger-brain": (4, 3, 3, True)}
    # everything else identical: data, seed, batch, schedule, budget
    configs = [config_lib.to_dict(run.config) for run in study.runs]
    for values in configs:
        for key in ("model", "ema"):
            values.pop(key)
        values.pop("seed")
    assert all(values == configs[0] for values in configs)
    assert study.base.preset == "maze-cpu" and study.base.max_steps == 600 and study.base.max_minutes is None
    assert study_lib.make_study(out="unused", cuda_available=True).base.preset == "maze-paper"
    # a built-in name with overrides extends it; a new name needs some
    assert study_lib.parse_variant("baseline:lr=1e-3").overrides[-1] == "lr=1e-3"
    assert study_lib.parse_variant("wide:model.hidden_size=128,data_dir=a,b").overrides == ("model.hidden_size=128", "data_dir=a,b")


def test_seeds_give_mean_std_and_a_band(tiny_study, tmp_path):
    out = tmp_path / "seeds"
    assert main(ablate_args(out, tiny_study / "data", "--seeds", "2", variants=[VARIANTS[1]], steps=4)) == 0
    report = json.loads((out / "ablation.json").read_text())
    (variant,) = report["variants"]
    finals = [read_metrics(out / f"shallow-seed{seed}")[-1]["test/exact_accuracy"] for seed in (0, 1)]
    losses = [[r["train/lm_loss"] for r in read_metrics(out / f"shallow-seed{seed}") if "train/lm_loss" in r][-1]
              for seed in (0, 1)]
    assert [run["seed"] for run in variant["runs"]] == [0, 1] and losses[0] != losses[1]
    assert variant["mean"]["heldout_exact"] == pytest.approx(sum(finals) / 2)
    assert variant["mean"]["final_loss"] == pytest.approx(sum(losses) / 2)
    assert variant["std"]["final_loss"] == pytest.approx(abs(losses[0] - losses[1]) / 2 ** 0.5)
    assert " ± " in (out / "ablation.md").read_text()
    figure = plots.ablation_figure(report)
    for axes in figure.axes:
        assert len(axes.get_lines()) == 1 and len(axes.collections) == 1  # the mean and its band


def test_rerun_skips_finished_and_resumes_unfinished(tiny_study, tmp_path, capsys):
    out = tmp_path / "study"
    shutil.copytree(tiny_study / "study", out)
    finished, killed = out / "deep-seed0", out / "shallow-seed0"
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in finished.rglob("*") if p.is_file()}
    original_final = json.loads((killed / "final_eval.json").read_text())
    # As if killed after the checkpoint at step 4, with a record half written.
    (killed / "final_eval.json").unlink()
    (killed / "checkpoints" / "step_00000006.pt").unlink()
    with open(killed / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 8, "train/lm_')

    capsys.readouterr()
    assert main(ablate_args(out, tiny_study / "data")) == 0
    log = capsys.readouterr().out
    assert "deep-seed0" in log and "finished, reused" in log and "resumes from its checkpoint" in log
    assert "resumed from" in log and "step_00000004.pt" in log
    assert "[deep-seed0] training" not in log
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in finished.rglob("*") if p.is_file()} == before
    resumed_final = json.loads((killed / "final_eval.json").read_text())
    assert resumed_final == original_final  # the resumed run continued exactly (bit-identical on CPU)
    report = json.loads((out / "ablation.json").read_text())
    shallow = report["variants"][1]["runs"][0]
    assert shallow["curves"]["step"] == [2, 4, 6] and shallow["heldout_curve"]["step"] == [2, 4, 6]
    assert shallow["heldout_exact"] == original_final["test/exact_accuracy"]

    # The same directory with other settings is refused in one line.
    assert main(ablate_args(out, tiny_study / "data", steps=7)) == 2
    one_error_line(capsys, "other settings (base.max_steps: 6 there, 7 now)")


@pytest.mark.parametrize("extra, expected", [
    (["--variant", "x:model.depth=3"], "variant x: unknown config field 'model.depth'"),
    (["--variant", "x:lr=fast"], "variant x: lr: expected a number"),
    (["--variant", "x:lr"], "'lr' is not of the form field=value"),
    (["--variant", "nope"], "'nope' is not a built-in variant"),
    (["--variant", "a b:lr=1"], "the name must be"),
    (["--variant", "a:lr=1", "--variant", "a:lr=2"], "variant 'a' is given twice"),
    (["--only", "baseline,nope"], "--only: unknown variant 'nope'"),
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--max-steps", "0"], "--max-steps must be >= 1"),
    (["--max-minutes", "0"], "--max-minutes must be > 0"),
    (["--set", "model.hiden_size=3"], "unknown config field 'model.hiden_size'"),
    (["--preset", "nope"], "invalid choice"),
])
def test_bad_ablate_arguments_give_one_line(extra, expected, tmp_path, capsys):
    assert main(["ablate", "--out", str(tmp_path / "study"), *extra]) == 2
    one_error_line(capsys, expected)
    assert not (tmp_path / "study").exists()


def test_an_existing_directory_that_is_no_study_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["ablate", "--out", str(tmp_path), "--max-steps", "1"]) == 2
    one_error_line(capsys, "is not a study directory")
