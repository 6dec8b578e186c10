"""`trm-fast` on Sudoku end to end on a tiny config: data -> train (preset by dataset) -> eval -> solve
(text and image), the loss going down, the ablation study's Sudoku variants, one-line errors."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.cli_helpers import one_error_line, train_args
from trm_fast import config as config_lib
from trm_fast.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Every field a preset could set differently is given, so the run is the same whichever preset the
# dataset picks (sudoku-cpu here; sudoku-paper on a machine with CUDA).
TINY_SETS = [
    "sudoku.size=6", "sudoku.num_train=60", "sudoku.num_test=10", "sudoku.num_aug=4", "sudoku.min_rating=0",
    "compile=false", "model.hidden_size=32", "model.num_heads=2", "model.h_cycles=2", "model.l_cycles=1",
    "model.puzzle_emb_len=1", "model.halt_max_steps=3", "model.mlp_t=true", "model.pos_encodings=none",
    "model.forward_dtype=float32", "global_batch_size=32", "lr=3e-3", "puzzle_emb_lr=3e-3", "lr_warmup_steps=2",
    "lr_min_ratio=1.0", "weight_decay=0.1", "puzzle_emb_weight_decay=0.1", "ema_rate=0.9", "log_interval=5",
    "eval_interval=none", "checkpoint_interval=none", "eval_batch_size=16", "max_minutes=none", "num_threads=1",
]
STEPS = 40


def tiny_train_args(data_dir, run_dir, *extra, steps=STEPS):
    return train_args("sudoku", data_dir, run_dir, TINY_SETS, steps, *extra)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-sudoku")
    assert main(tiny_train_args(root / "data", root / "run")) == 0
    return root


def test_dataset_sudoku_picks_a_sudoku_preset_and_trains_on_generated_puzzles(trained_run):
    run_dir = trained_run / "run"
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["dataset"] == "sudoku"
    assert cfg["preset"] == config_lib.default_preset_name(torch.cuda.is_available(), "sudoku")
    assert cfg["preset"] in ("sudoku-cpu", "sudoku-paper")
    record = json.loads((trained_run / "data" / "trm_fast_build.json").read_text())
    assert record["kind"] == "sudoku" and (record["size"], record["box_rows"], record["box_cols"]) == (6, 2, 3)
    final = json.loads((run_dir / "final_eval.json").read_text())
    assert final["step"] == STEPS


def test_a_short_run_lowers_the_loss(trained_run):
    records = [json.loads(line) for line in (trained_run / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/lm_loss"] for r in records if "train/lm_loss" in r]
    assert len(losses) == STEPS // 5
    # The first interval starts near ln(8) = 2.08 (8 tokens); 40 steps bring it to ~1.75 (copying the
    # ~10 givens of 36 perfectly and guessing the rest uniformly would give ~1.3). No learning: ~2.1.
    assert losses[-1] < 0.88 * losses[0] and losses[-1] < min(losses[:3]), losses


def test_eval_and_solve_show_sudoku_grids(trained_run, tmp_path, capsys):
    run_dir = str(trained_run / "run")
    capsys.readouterr()
    assert main(["eval", "--checkpoint", run_dir, "--device", "cpu", "--backend", "torch"]) == 0
    out = capsys.readouterr().out
    assert "10 examples, 3 supervision steps" in out and "exact accuracy" in out and "token accuracy" in out

    image = tmp_path / "solve.png"
    assert main(["solve", "--checkpoint", run_dir, "--index", "4", "--steps", "--image", str(image),
                 "--device", "cpu", "--backend", "torch"]) == 0
    out = capsys.readouterr().out
    assert "question:" in out and "after step 1" in out and "after step 2" in out and "model answer after 3 steps" in out
    assert out.count("------+------") >= 2 * 5  # box separators: question, two steps, the answer (and expected)
    grid_rows = [line for line in out.splitlines() if line.count("|") == 1 and len(line.replace("*", " ")) >= 13]
    assert len(grid_rows) >= 6 * 4
    assert ("CORRECT" in out) != ("WRONG" in out)
    if "WRONG" in out:
        assert "*" in out.split("model answer after")[1] and "expected:" in out  # wrong cells marked
    assert image.read_bytes()[:8] == PNG_SIGNATURE and f"wrote {image}" in out


def test_solve_image_panels_are_sudoku_grids():
    """The figure for a Sudoku: one panel per step plus question and expected, digits as text."""
    from trm_fast import plots
    from trm_fast.data.sudoku import geometry

    question = np.array([2, 1, 1, 1] * 4)
    answers = [np.array([2, 3, 4, 5] * 4), np.array([2, 3, 4, 5] * 4)]
    figure = plots.solve_figure(question, answers, [-1.0, 2.0], np.array([2, 3, 4, 5] * 4), vocab_size=6,
                                sudoku=geometry(4))
    axes = [a for a in figure.axes if a.get_title()]
    assert [a.get_title().split(":")[0] for a in axes] == ["question", "step 1", "step 2", "expected"]
    texts = [t.get_text() for t in axes[1].texts]
    assert sorted(texts) == sorted(["1", "2", "3", "4"] * 4)  # token d + 1 drawn as digit d
    assert "halts" in axes[2].get_title()
    with pytest.raises(plots.PlotError):
        plots.solve_figure(question, answers, [0.0, 0.0], question, vocab_size=6, sudoku=geometry(9))


def test_eval_on_a_sudoku_csv_matches_the_folder(trained_run, tmp_path, capsys):
    from trm_fast.data import load_split, write_sudoku_csv

    test = load_split(trained_run / "data", "test")
    csv_path = write_sudoku_csv(tmp_path / "test.csv", test.inputs, test.labels)
    run_dir = str(trained_run / "run")
    assert main(["eval", "--checkpoint", run_dir, "--data", str(csv_path), "--backend", "torch"]) == 0
    from_csv = capsys.readouterr().out.splitlines()
    assert main(["eval", "--checkpoint", run_dir, "--data", str(trained_run / "data"), "--backend", "torch"]) == 0
    from_folder = capsys.readouterr().out.splitlines()
    assert from_csv[-1].startswith("exact accuracy") and from_csv[-1] == from_folder[-1]
    assert main(["solve", "--checkpoint", run_dir, "--data", str(csv_path), "--index", "0", "--backend", "torch"]) == 0
    assert "------+------" in capsys.readouterr().out


def test_a_sudoku_folder_as_dataset_also_picks_the_sudoku_preset(trained_run):
    from trm_fast.cli import build_train_config, make_parser

    args = make_parser().parse_args(["train", "--dataset", str(trained_run / "data")])
    cfg, _ = build_train_config(args)
    assert cfg.preset == config_lib.default_preset_name(torch.cuda.is_available(), "sudoku")
    args.dataset = "sudoku"
    assert build_train_config(args)[0].preset == cfg.preset
    args.dataset = "maze"
    assert build_train_config(args)[0].preset == config_lib.default_preset_name(torch.cuda.is_available(), "maze")


def test_data_sudoku_writes_a_folder_and_csv_files_that_read_back(tmp_path, capsys):
    from trm_fast.data import load_split, read_sudoku_csv

    out = tmp_path / "s4"
    assert main(["data", "sudoku", "--out", str(out), "--size", "4", "--num-train", "6", "--num-test", "3",
                 "--num-aug", "2", "--csv"]) == 0
    printed = capsys.readouterr().out
    assert "6 train puzzles x 3 (original + 2 augmented) + 3 test 4x4 (boxes 2x2) Sudoku" in printed
    assert "test puzzle 0:" in printed and "---+---" in printed
    train, test = load_split(out, "train"), load_split(out, "test")
    assert train.get_set().num_examples == 18 and test.get_set().num_examples == 3
    records = read_sudoku_csv(out / "train.csv")  # the originals only, every row checked
    assert len(records) == 6 and np.array_equal(records.inputs, np.asarray(train.inputs)[::3])
    assert len(read_sudoku_csv(out / "test.csv")) == 3


@pytest.mark.parametrize("argv, expected", [
    (["data", "sudoku", "--out", "x", "--size", "5"], "invalid choice"),
    (["data", "sudoku", "--out", "x", "--size", "6", "--box-rows", "4"], "do not tile"),
    (["data", "sudoku", "--out", "x", "--size", "6", "--num-train", "-1"], "num_train must be an integer >= 0"),
    (["train", "--dataset", "sudoku", "--set", "sudoku.size=7"], "sudoku.size/box_rows/box_cols"),
    (["train", "--dataset", "sudoku", "--set", "sudoku.num_aug=-2"], "sudoku.num_aug"),
])
def test_bad_sudoku_arguments_give_one_line(argv, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    one_error_line(capsys, expected)


def test_bad_sudoku_csv_gives_one_line(trained_run, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("source,question,answer,rating\nx," + "1" * 36 + "," + "1" * 36 + ",0\n")
    assert main(["eval", "--checkpoint", str(trained_run / "run"), "--data", str(bad)]) == 2
    one_error_line(capsys, f"{bad} line 2 field 'question': the givens break a Sudoku rule: repeats digit 1 in row 1")


def test_ablate_dataset_sudoku_uses_the_papers_sudoku_ablations(tmp_path, capsys):
    from trm_fast import study as study_lib

    study = study_lib.make_study(out=tmp_path / "plan", dataset="sudoku", cuda_available=False)
    assert study.base.preset == "sudoku-cpu" and study.base.dataset == "sudoku"
    assert [v.name for v in study.variants] == ["baseline", "no-ema", "less-recursion", "bigger-brain", "attention"]
    configs = {run.variant.name: run.config.model for run in study.runs}
    assert (configs["baseline"].h_cycles, configs["baseline"].l_cycles, configs["baseline"].mlp_t) == (3, 6, True)
    assert not next(run.config.ema for run in study.runs if run.variant.name == "no-ema")
    assert (configs["less-recursion"].h_cycles, configs["less-recursion"].l_cycles) == (2, 2)
    assert (configs["bigger-brain"].num_layers, configs["bigger-brain"].l_cycles) == (4, 3)
    assert not configs["attention"].mlp_t and configs["attention"].pos_encodings == "rope"
    on_gpu = study_lib.make_study(out=tmp_path / "gpu", dataset="sudoku", cuda_available=True)
    assert on_gpu.base.preset == "sudoku-paper" and on_gpu.base.max_steps == 1000
    assert [v.name for v in study_lib.make_study(out=tmp_path / "m", cuda_available=False).variants] == \
        list(study_lib.DEFAULT_VARIANT_NAMES)

    # A tiny study on Sudoku data: two of the built-in variants, two steps each.
    args = ["ablate", "--dataset", "sudoku", "--out", str(tmp_path / "study"), "--data-dir", str(tmp_path / "data"),
            "--max-steps", "2", "--no-progress", "--device", "cpu", "--backend", "torch",
            "--variant", "less-recursion", "--variant", "attention"]
    for item in TINY_SETS + ["log_interval=1", "eval_interval=1", "eval_examples=4", "checkpoint_interval=2"]:
        args += ["--set", item]
    assert main(args) == 0
    report = json.loads((tmp_path / "study" / "ablation.json").read_text())
    assert [v["name"] for v in report["variants"]] == ["less-recursion", "attention"]
    assert "6x6 Sudoku" in report["base_summary"] and "Sudoku symmetries" in report["held_out"]
    assert Path(tmp_path / "study" / "ablation.png").read_bytes()[:8] == PNG_SIGNATURE
