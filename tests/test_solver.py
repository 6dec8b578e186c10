"""`trm_fast.load` and its Solver: every accepted puzzle form, one-line errors for bad ones, the same
answers from a run directory, a checkpoint file and an exported model; `trm-fast eval` with halting,
the per-step curve, --json, --image, --weights, and data that needs every step."""
import json

import numpy as np
import pytest
import torch

from tests.cli_helpers import one_error_line, train_args
from trm_fast.cli import main
from trm_fast.data import DataError, render_sudoku
from trm_fast.data.sudoku import geometry
from trm_fast.model.compat import CheckpointError
from trm_fast.solver import PuzzleFormat

MAZE = ["S# G #",
        " # ###",
        " # # #",
        " # # #",
        "     #",
        "######"]
MAZE_TOKENS = np.array([["# SG".index(ch) + 1 for ch in row] for row in MAZE])  # 1 wall, 2 open, 3 S, 4 G
MAZE_FORMAT = PuzzleFormat("maze", 36, 6)
SUDOKU_FORMAT = PuzzleFormat("sudoku", 36, 8, geometry(6))
SUDOKU = ["1.3...", "......", "..2...", "......", "....5.", ".....6"]
SUDOKU_DIGITS = np.array([[0 if ch == "." else int(ch) for ch in row] for row in SUDOKU])


def test_maze_tokens_follow_the_reference_scheme():
    assert MAZE_TOKENS[0].tolist() == [3, 1, 2, 4, 2, 1]  # S # ' ' G ' ' #


@pytest.mark.parametrize("form", [
    MAZE,                                  # text rows
    "\n".join(MAZE),                       # one string, rows on lines
    "\n" + "\n".join(MAZE) + "\n",         # as written in a triple-quoted string
    "".join(MAZE),                         # one string of N*N characters
    MAZE_TOKENS,                           # integers [N, N]
    MAZE_TOKENS.reshape(-1),               # integers, flat
    MAZE_TOKENS.tolist(),                  # nested lists
    torch.as_tensor(MAZE_TOKENS),          # a tensor
])
def test_every_single_maze_form_gives_the_same_tokens(form):
    tokens, single = MAZE_FORMAT.encode(form)
    assert single and tokens.shape == (1, 36)
    assert tokens[0].tolist() == MAZE_TOKENS.reshape(-1).tolist()


def test_batches_of_mazes():
    flipped = MAZE_TOKENS[:, ::-1]
    for form in (np.stack([MAZE_TOKENS, flipped]), [MAZE, flipped], ["\n".join(MAZE), flipped.tolist()],
                 np.stack([MAZE_TOKENS, flipped]).reshape(2, 36)):
        tokens, single = MAZE_FORMAT.encode(form)
        assert not single and tokens.shape == (2, 36)
        assert tokens[0].tolist() == MAZE_TOKENS.reshape(-1).tolist() and tokens[1].tolist() == flipped.reshape(-1).tolist()


@pytest.mark.parametrize("form", [
    SUDOKU,
    "\n".join(SUDOKU),
    "".join(SUDOKU).replace(".", "0"),
    render_sudoku("".join(SUDOKU)),       # what `trm-fast solve` prints, box separators included
    SUDOKU_DIGITS,
    SUDOKU_DIGITS.reshape(-1).tolist(),
])
def test_every_sudoku_form_gives_the_same_tokens(form):
    tokens, single = SUDOKU_FORMAT.encode(form)
    assert single and tokens[0].tolist() == (SUDOKU_DIGITS.reshape(-1) + 1).tolist()  # blank 1, digit d -> d + 1


@pytest.mark.parametrize("puzzle_format, puzzles, expected", [
    (MAZE_FORMAT, MAZE[:5], "has 5 rows; expected 6 (6x6 mazes)"),
    (MAZE_FORMAT, [row[:5] for row in MAZE], "row 1 has 5 cells; expected 6"),
    (MAZE_FORMAT, "".join(MAZE)[:35], "has 35 cells; expected 36"),
    (MAZE_FORMAT, [MAZE[0].replace("#", "x")] + MAZE[1:], "puzzle: character 'x' at row 1 column 2 is not one of '# SG'"),
    (MAZE_FORMAT, [MAZE[0].replace(" ", "S", 1)] + MAZE[1:], "expected exactly one 'S' cell, found 2"),
    (MAZE_FORMAT, np.zeros((5, 5), int), "has shape (5, 5); expected a 6x6 grid"),
    (MAZE_FORMAT, np.full((6, 6), 9), "value 9 at cell 0 is not one of the maze tokens"),
    (MAZE_FORMAT, MAZE_TOKENS.astype(float), "expected integers"),
    (MAZE_FORMAT, [MAZE, MAZE[:4]], "puzzle 1: has 4 rows"),
    (MAZE_FORMAT, [], "expected a puzzle or a non-empty list"),
    (MAZE_FORMAT, {"maze": MAZE}, "expected a puzzle or a non-empty list of them, got dict"),
    (SUDOKU_FORMAT, ["1.3..x"] + SUDOKU[1:], "character 'x' at row 1 column 6 is not one of '.123456'"),
    (SUDOKU_FORMAT, ["1.3..7"] + SUDOKU[1:], "character '7'"),
    (SUDOKU_FORMAT, ["1.3..1"] + SUDOKU[1:], "the givens break a Sudoku rule: the grid repeats digit 1 in row 1"),
    (SUDOKU_FORMAT, np.zeros((9, 9), int), "has shape (9, 9); expected a 6x6 grid"),
])
def test_bad_puzzles_are_one_line_errors_naming_the_puzzle(puzzle_format, puzzles, expected):
    with pytest.raises(DataError) as caught:
        puzzle_format.encode(puzzles)
    message = str(caught.value)
    assert expected in message and "\n" not in message and message.startswith("puzzle")


def test_answers_read_back_as_text_and_integers():
    answer = MAZE_TOKENS.copy()
    answer[1:5, 0] = 5  # a path
    assert MAZE_FORMAT.text(answer.reshape(-1)).splitlines()[1] == "o# ###"
    assert MAZE_FORMAT.grid(answer.reshape(-1)).tolist() == answer.tolist()
    tokens = SUDOKU_DIGITS.reshape(-1) + 1
    assert SUDOKU_FORMAT.text(tokens).splitlines()[0] == "1.3..."
    assert SUDOKU_FORMAT.grid(tokens).tolist() == SUDOKU_DIGITS.tolist()


# ----------------------------------------------------------------------------------------------
# A tiny trained run

TINY_SETS = [
    "maze.size=6", "maze.num_train=48", "maze.num_test=12", "compile=false", "model.forward_dtype=float32",
    "model.hidden_size=32", "model.num_heads=2", "model.h_cycles=2", "model.l_cycles=1", "model.puzzle_emb_len=1",
    "model.halt_max_steps=3", "global_batch_size=8", "lr_warmup_steps=2", "log_interval=2", "eval_interval=none",
    "checkpoint_interval=none", "eval_batch_size=8", "ema_rate=0.5", "max_minutes=none", "num_threads=1",
]
DEVICE = ["--device", "cpu", "--backend", "torch"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("solver")
    assert main(train_args("maze", root / "data", root / "run", TINY_SETS, 3, preset="maze-cpu")) == 0
    return root


def test_a_run_directory_its_checkpoint_and_its_export_solve_alike(run, tmp_path):
    import trm_fast
    from trm_fast.pretrained.build import export_model
    from trm_fast.train.run_directory import latest_checkpoint

    exported = export_model(run / "run", tmp_path, "tiny")
    info = json.loads((exported / "model.json").read_text())
    assert info["puzzle"] == {"kind": "maze", "size": 6, "style": "random"} and info["weights"] == "ema"
    solvers = [trm_fast.load(path, device="cpu", backend="torch")
               for path in (run / "run", latest_checkpoint(run / "run"), exported)]
    assert all(solver.puzzle.kind == "maze" and solver.puzzle.side == 6 for solver in solvers)
    answers = [solver.solve([MAZE, MAZE_TOKENS[::-1]], halt=False) for solver in solvers]
    assert [[a.tokens.tolist() for a in batch] for batch in answers[1:]] == [[a.tokens.tolist() for a in answers[0]]] * 2


def test_solve_and_steps_agree(run):
    import trm_fast

    solver = trm_fast.load(run / "run", device="cpu", backend="torch", batch_size=2)
    single = solver.solve(MAZE, halt=False)
    assert isinstance(single, trm_fast.Solution) and single.steps == 3
    assert len(single.text.splitlines()) == 6 and single.grid.shape == (6, 6) and str(single) == single.text
    steps = list(solver.steps("\n".join(MAZE)))
    assert [s.steps for s in steps] == [1, 2, 3]
    assert steps[-1].tokens.tolist() == single.tokens.tolist() and steps[-1].q_halt == pytest.approx(single.q_halt, abs=1e-5)
    batch = solver.solve([MAZE] * 5)  # 5 puzzles in slots of 2, each to its own halting decision
    assert len(batch) == 5 and all(answer.steps == batch[0].steps for answer in batch)
    stop = next((s for s in steps if s.halted), steps[-1])
    assert batch[0].steps == stop.steps and batch[0].tokens.tolist() == stop.tokens.tolist()
    assert batch[0].halted == stop.halted
    with pytest.raises(DataError, match="steps\\(\\) takes one puzzle"):
        next(solver.steps([MAZE, MAZE]))
    assert "6x6 mazes" in repr(solver)


def test_ema_and_raw_weights_differ_and_bad_names_are_one_line(run, tmp_path):
    import trm_fast
    from trm_fast.solver import read_checkpoint

    ema = read_checkpoint(run / "run")
    raw = read_checkpoint(run / "run", "raw")
    assert ema.weights == "ema" and raw.weights == "raw"
    key = "inner.lm_head.weight"
    assert not torch.equal(ema.state_dict[key], raw.state_dict[key])  # ema_rate 0.5 after 3 steps
    with pytest.raises(CheckpointError, match="checkpoint not found") as caught:
        trm_fast.load(tmp_path / "no-such-model")
    assert "\n" not in str(caught.value)
    reference_file = tmp_path / "step_3"
    torch.save({f"_orig_mod.model.{k}": v for k, v in ema.state_dict.items()}, reference_file)
    with pytest.raises(CheckpointError, match="EMA weights only"):
        read_checkpoint(reference_file, "raw")


def test_eval_halt_json_and_image(run, tmp_path, capsys):
    report_path, image = tmp_path / "eval.json", tmp_path / "curve.png"
    argv = ["eval", "--checkpoint", str(run / "run"), *DEVICE, "--halt", "--json", str(report_path),
            "--plot", str(image), "--batch-size", "5"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "accuracy after each supervision step" in out and "halting: each example stops" in out
    assert "EMA weights" in out
    report = json.loads(report_path.read_text())
    all_steps, halting = report["all_steps"], report["halting"]
    assert len(all_steps["per_step"]) == 3 and report["examples"] == 12
    assert all_steps["per_step"][-1]["exact_accuracy"] == all_steps["exact_accuracy"]
    printed = next(line for line in out.splitlines() if line.startswith("exact accuracy"))
    assert printed.startswith(f"exact accuracy {all_steps['exact_accuracy']:.4f}  token accuracy {all_steps['accuracy']:.4f}")
    assert sum(halting["steps_histogram"].values()) == 12 and halting["example_steps"] <= all_steps["example_steps"]
    assert halting["example_steps"] == sum(int(step) * n for step, n in halting["steps_histogram"].items())
    assert all_steps["example_steps"] == 36 and all_steps["flops"] > halting["flops"] * 0 > -1
    assert image.read_bytes().startswith(b"\x89PNG")

    assert main(["eval", "--checkpoint", str(run / "run"), *DEVICE, "--weights", "raw"]) == 0
    assert "raw weights" in capsys.readouterr().out


def test_data_voted_over_every_step_runs_all_steps_with_one_line(run, tmp_path, capsys, monkeypatch):
    """A stand-in for ARC: a data source that declares it needs every step."""
    import dataclasses

    from trm_fast.train import data as data_lib

    real_open = data_lib.open_eval_source
    monkeypatch.setattr(data_lib, "open_eval_source",
                        lambda path: dataclasses.replace(real_open(path), needs_all_steps=True))
    report_path = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(run / "run"), *DEVICE, "--halt", "--json", str(report_path)]) == 0
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if "voted over every supervision step" in line]
    assert len(notes) == 1 and "--halt runs all 3" in notes[0]
    assert "halting: each example stops" not in out
    report = json.loads(report_path.read_text())
    assert report["halting"] is None and report["halting_skipped"] == notes[0]


def test_eval_and_solve_cli_errors_are_one_line(run, tmp_path, capsys):
    assert main(["eval", "--checkpoint", "no-such-model"]) == 2
    one_error_line(capsys, "checkpoint not found (nor a shipped model")
    assert main(["eval", "--checkpoint", str(run / "run"), *DEVICE, "--weights", "best"]) == 2
    one_error_line(capsys, "invalid choice")
    assert main(["eval", "--checkpoint", str(run / "run"), *DEVICE, "--image", "x.nope"]) == 2
    one_error_line(capsys, "unknown image type")
    from trm_fast.data import generate_mazes, write_maze_csv

    other_size = write_maze_csv(tmp_path / "mazes-7x7.csv", *generate_mazes(2, 7, style="random"))
    assert main(["eval", "--checkpoint", str(run / "run"), *DEVICE, "--dataset", str(other_size)]) == 2
    one_error_line(capsys, f"{other_size}: vocabulary 6 / sequence length 49 do not match the model's 6 / 36")


def test_eval_and_solve_help_shows_defaults(capsys):
    texts = {}
    for command in ("eval", "solve"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        texts[command] = text = " ".join(capsys.readouterr().out.split())
        assert "--dataset DATASET, --data DATASET" in text and "--set FIELD=VALUE, --model-set FIELD=VALUE" in text
        assert "(default: fast)" in text and "--device {auto,cpu,cuda} where the model runs" in text
    assert "(default: 256)" in texts["eval"] and "(default: stablemax)" in texts["eval"]
    assert "which example of the data (default: 0)" in texts["solve"]
