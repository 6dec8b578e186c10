"""`trm-fast eval --maze-styles`: a tiny trained maze run on every held-out style and on its own
generator with another seed, printed as a table and written as JSON; one-line errors otherwise."""
import json

import numpy as np
import pytest

from tests.cli_helpers import one_error_line, train_args
from trm_fast.cli import main
from trm_fast.data import load_split
from trm_fast.data.csv_format import read_maze_csv
from trm_fast.data.heldout_mazes import HELD_OUT_STYLES
from trm_fast.data.maze import canonical_key
from trm_fast.train import maze_styles

SIZE = 6
TINY_SETS = [
    f"maze.size={SIZE}", "maze.num_train=48", "maze.num_test=8", "compile=false", "model.forward_dtype=float32",
    "model.hidden_size=32", "model.num_heads=2", "model.h_cycles=2", "model.l_cycles=1", "model.puzzle_emb_len=1",
    "model.halt_max_steps=3", "global_batch_size=8", "lr_warmup_steps=2", "log_interval=2",
    "eval_interval=none", "checkpoint_interval=none", "eval_batch_size=8",
]
COUNT = 12
CPU = ["--device", "cpu", "--backend", "torch"]


def expected_styles(style: str, size: int) -> list[str]:
    """The table's rows: the held-out styles, the built-in generator (the run's own style first, then
    the others), then the held-out styles and the built-in random walls one size smaller, in a wall frame."""
    own = [style] + [other for other in ("corridors", "random") if other != style]
    framed = [f"{name}-{size - 1}x{size - 1}" for name in (*HELD_OUT_STYLES, "own-random")]
    return [*HELD_OUT_STYLES, *(f"own-{name}" for name in own), *framed]


@pytest.fixture(scope="module")
def maze_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("styles")
    assert main(train_args("maze", root / "data", root / "run", TINY_SETS, 2, preset="maze-cpu")) == 0
    return root


def styles_command(run_dir, *extra):
    return ["eval", "--checkpoint", str(run_dir), "--maze-styles", "--count", str(COUNT), *CPU, *extra]


def test_table_has_every_style_and_the_json_every_row(maze_run, tmp_path, capsys):
    capsys.readouterr()
    report_path = tmp_path / "styles.json"
    assert main(styles_command(maze_run / "run", "--json", str(report_path), "--save-sets", str(tmp_path / "sets"))) == 0
    out = capsys.readouterr().out
    assert "| style | description | mazes | exact | token | exact (halting) | mean steps |" in out
    table = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    from trm_fast.config import preset

    expected = expected_styles(preset("maze-cpu").maze.style, SIZE)
    assert set(expected) <= set(table)
    report = json.loads(report_path.read_text())
    assert [row["style"] for row in report["rows"]] == expected
    assert report["size"] == SIZE and report["count"] == COUNT and report["halt_max_steps"] == 3
    data = maze_run / "data"  # --data-dir: the run's dataset folder
    assert report["data"] == str(data.resolve())
    seen = {canonical_key(grid) for split in ("train", "test")
            for grid in np.asarray(load_split(data, split).inputs).reshape(-1, SIZE, SIZE)}
    assert report["excluded_mazes"] == len(seen) == 56
    for row in report["rows"]:
        framed = row["style"].endswith(f"-{SIZE - 1}x{SIZE - 1}")
        # framed smaller mazes that equal a training or test maze are left out (and the note says how many)
        assert row["mazes"] == COUNT or (framed and 0 < row["mazes"] < COUNT and "left out" in row["note"]), row
        for name in ("exact", "token", "exact_halting"):
            assert 0.0 <= row[name] <= 1.0
        assert 1.0 <= row["mean_steps"] <= 3.0
        assert f"| {row['style']} | {row['description']} | {row['mazes']} | {row['exact']:.2%} | {row['token']:.2%} |" in out
        # The saved set is the evaluated one: new mazes only, none seen in training or test.
        records = read_maze_csv(row["file"])
        assert len(records) == row["mazes"] and records.size == SIZE
        assert not seen & {canonical_key(grid) for grid in records.inputs.reshape(-1, SIZE, SIZE)}
    assert f"wrote {report_path}" in out


def test_a_saved_set_reproduces_its_row(maze_run, tmp_path, capsys):
    report_path, row_path = tmp_path / "styles.json", tmp_path / "row.json"
    sets = tmp_path / "sets"
    assert main(styles_command(maze_run / "run", "--json", str(report_path), "--save-sets", str(sets))) == 0
    row = next(row for row in json.loads(report_path.read_text())["rows"] if row["style"] == "dfs")
    assert main(["eval", "--checkpoint", str(maze_run / "run"), "--dataset", str(sets / "dfs.csv"), "--halt",
                 "--json", str(row_path), "--batch-size", "16", *CPU]) == 0
    again = json.loads(row_path.read_text())
    assert again["examples"] == COUNT
    assert again["all_steps"]["exact_accuracy"] == pytest.approx(row["exact"])
    assert again["all_steps"]["accuracy"] == pytest.approx(row["token"])
    assert again["halting"]["exact_accuracy"] == pytest.approx(row["exact_halting"])
    assert again["halting"]["steps"] == pytest.approx(row["mean_steps"])


def test_same_seed_same_sets_other_seed_other_sets(maze_run, tmp_path):
    from trm_fast.config import MazeSettings

    maze = MazeSettings(size=7, num_train=1, num_test=1, style="random")
    first = maze_styles.maze_sets(maze, 5, 1, set())
    again = maze_styles.maze_sets(maze, 5, 1, set())
    other = maze_styles.maze_sets(maze, 5, 2, set())
    assert [s.style for s in first] == expected_styles("random", 7)
    for a, b, c in zip(first, again, other):
        assert np.array_equal(a.inputs, b.inputs) and np.array_equal(a.labels, b.labels)
        if a.style in HELD_OUT_STYLES or a.style.split("-")[0] in HELD_OUT_STYLES:
            assert not np.array_equal(a.inputs, c.inputs)
    excluded = {canonical_key(grid) for s in first for grid in s.inputs.reshape(-1, 7, 7)}
    for s in maze_styles.maze_sets(maze, 5, 1, excluded):
        assert not excluded & {canonical_key(grid) for grid in s.inputs.reshape(-1, 7, 7)}


def test_a_mixed_run_gets_a_row_per_own_style_and_framed_smaller_mazes_keep_their_solution():
    from trm_fast.config import MazeSettings
    from trm_fast.data.maze import check_maze_pair, shortest_path_count

    sets = maze_styles.maze_sets(MazeSettings(size=7, style="mixed"), 6, 1, set())
    assert [s.style for s in sets] == expected_styles("mixed", 7)
    framed = {s.style: s for s in sets}["dfs-6x6"]
    grids = framed.inputs.reshape(-1, 7, 7)
    assert (grids[:, 6, :] == 1).all() and (grids[:, :, 6] == 1).all()  # the wall frame
    for question, answer in zip(framed.inputs, framed.labels):
        assert shortest_path_count(question, 7)[1] == 1
        assert check_maze_pair(question, answer, 7) >= 6  # dfs keeps its min_moves (the small size) in the frame
    # a framed maze equal to an excluded one (up to symmetry) is left out, and the note says so
    seen = {canonical_key(grids[0][::-1])}
    again = {s.style: s for s in maze_styles.maze_sets(MazeSettings(size=7, style="mixed"), 6, 1, seen)}["dfs-6x6"]
    assert len(again.inputs) == 5 and "1 framed mazes equal a training or test maze" in again.note


def test_a_style_short_of_mazes_is_evaluated_on_those_it_made(monkeypatch):
    from trm_fast.config import MazeSettings
    from trm_fast.data import heldout_mazes

    monkeypatch.setattr(heldout_mazes, "MAX_FAILURES", 300)
    sets = {s.style: s for s in maze_styles.maze_sets(MazeSettings(size=5, style="random"), 80, 1, set())}
    assert 0 < len(sets["dfs"].inputs) < 80 and "only" in sets["dfs"].note and "gave up" in sets["dfs"].note
    assert len(sets["walls45"].inputs) == 80 and sets["walls45"].note is None


def test_maze_styles_errors_are_one_line(maze_run, tmp_path, capsys):
    run_dir = str(maze_run / "run")
    for argv, expected in [
        (styles_command(run_dir, "--dataset", "x.csv"), "does not take --dataset"),
        (["eval", "--checkpoint", run_dir, "--count", "5", *CPU], "--count goes with --maze-styles"),
        (styles_command(run_dir, "--count", "0"), "count must be an integer >= 1"),
    ]:
        capsys.readouterr()
        assert main(argv) == 2
        one_error_line(capsys, expected)


def test_a_run_not_on_the_maze_generator_is_a_usage_error(maze_run, tmp_path, capsys):
    import torch

    from trm_fast.train.run_directory import latest_checkpoint

    source = latest_checkpoint(maze_run / "run")
    state = torch.load(source, map_location="cpu", weights_only=False)
    state["train_config"]["dataset"] = "data/some-folder"
    run_dir = tmp_path / "other"
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save(state, run_dir / "checkpoints" / source.name)
    capsys.readouterr()
    assert main(styles_command(run_dir)) == 2
    one_error_line(capsys, "needs a model trained on the built-in maze data (dataset 'maze')")


def test_halting_columns_come_from_the_run_that_halts():
    import torch

    from trm_fast.data.heldout_mazes import STYLE_DESCRIPTIONS, generate_held_out
    from trm_fast.model import TRMConfig, make_model

    config = TRMConfig(vocab_size=6, seq_len=SIZE * SIZE, hidden_size=32, num_heads=2, h_cycles=2, l_cycles=1,
                       puzzle_emb_len=1, halt_max_steps=3)
    torch.manual_seed(0)
    inner = make_model(config, "fast", "torch").eval()

    class HaltAtOnce(torch.nn.Module):  # the Q head says halt after the first step
        def __init__(self):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def initial_carry(self, batch):
            return self.inner.initial_carry(batch)

        def forward(self, carry, batch):
            carry, outputs = self.inner(carry, batch)
            return carry, {**outputs, "q_halt_logits": torch.full_like(outputs["q_halt_logits"], 4.0)}

    inputs, labels = generate_held_out("walls45", 6, SIZE)
    maze_set = maze_styles.MazeSet("walls45", STYLE_DESCRIPTIONS["walls45"], inputs, labels)
    row = maze_styles.evaluate_set(HaltAtOnce(), maze_set, torch.device("cpu"), 4, backend="torch")
    assert row["mazes"] == 6 and row["mean_steps"] == 1.0
    assert row["mean_moves"] == pytest.approx(((labels == 5).sum(1) + 1).mean())


def test_the_table_in_the_docs_equals_its_log():
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    text = (repo / "docs" / "data.md").read_text().split("## Held-out maze styles")[1].split("\n## ")[0]
    rows = json.loads((repo / "docs" / "results" / "maze-cpu-ship-maze-styles.json").read_text())["rows"]
    for row in rows:
        line = (f"| {row['style']} | {row['mazes']} | {row['exact']:.2%} | {row['token']:.2%} | "
                f"{row['exact_halting']:.2%} | {row['mean_steps']:.2f} | {row['mean_moves']:.1f} |")
        assert line in text, line
