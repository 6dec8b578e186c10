"""`trm-fast plot` and `trm-fast solve --image` write valid pictures; their figures hold what they should."""
import json
from pathlib import Path

import numpy as np
import pytest

from tests.cli_helpers import one_error_line, train_args
from trm_fast import plots
from trm_fast.cli import main
from trm_fast.train.run_directory import load_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY_SETS = [
    "maze.size=6", "maze.num_train=48", "maze.num_test=8", "compile=false", "model.forward_dtype=float32", "model.hidden_size=32", "model.num_heads=2",
    "model.h_cycles=2", "model.l_cycles=1", "model.puzzle_emb_len=1", "model.halt_max_steps=3",
    "global_batch_size=8", "lr_warmup_steps=2", "log_interval=2", "eval_interval=2", "eval_examples=8",
    "checkpoint_interval=none", "eval_batch_size=8",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("plots")
    assert main(train_args("maze", root / "data", root / "run", TINY_SETS, 4, preset="maze-cpu")) == 0
    return root / "run"


def read_png(path: Path) -> np.ndarray:
    from matplotlib import image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    return image.imread(path)


def test_plot_writes_a_png_of_loss_accuracy_and_lr(tiny_run, tmp_path, capsys):
    out = tmp_path / "curves.png"
    assert main(["plot", str(tiny_run), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    pixels = read_png(out)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 600

    records = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "train/lm_loss" in r]
    figure = plots.runs_figure([load_run(tiny_run), load_run(tiny_run)])
    loss_axes, exact_axes, lr_axes = figure.axes
    assert len(loss_axes.get_lines()) == 2 and len(lr_axes.get_lines()) == 2
    assert len(exact_axes.get_lines()) == 4  # training and held-out per run
    assert list(loss_axes.get_lines()[0].get_ydata()) == [r["train/lm_loss"] for r in train]
    assert list(lr_axes.get_lines()[0].get_ydata()) == [r["train/lr"] for r in train]
    held_out = exact_axes.get_lines()[1]
    assert list(held_out.get_xdata()) == [2, 4]  # the evaluation at step 2, then the final one at 4
    assert held_out.get_ydata()[-1] == pytest.approx(100 * records[-1]["test/exact_accuracy"])


def test_plot_draws_arc_pass_at_2_when_the_run_voted(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "voted"
    shutil.copytree(tiny_run, run)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for number, record in enumerate(records):  # as an ARC run logs them: eval/pass@k, test/pass@k
        if "eval/exact_accuracy" in record:
            record["eval/pass@2"] = 0.1 * (number + 1)
        if record.get("final"):
            record["test/pass@2"] = 0.75
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    exact_axes = plots.runs_figure([load_run(run)]).axes[1]
    voted = exact_axes.get_lines()[2]
    expected = [100 * r["eval/pass@2"] for r in records if "eval/pass@2" in r] + [75.0]
    assert list(voted.get_ydata()) == pytest.approx(expected)
    assert "pass@2" in exact_axes.get_title() and "pass@2" in voted.get_label()
    assert len(plots.runs_figure([load_run(tiny_run)]).axes[1].get_lines()) == 2  # no vote, no third line


def test_solve_image_draws_every_supervision_step(tiny_run, tmp_path, capsys, monkeypatch):
    written = []  # the figures `solve` saves
    save_figure = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda figure, path: written.append(figure) or save_figure(figure, path))
    out = tmp_path / "solve.png"
    assert main(["solve", "--checkpoint", str(tiny_run), "--index", "1", "--image", str(out), "--device", "cpu",
                 "--backend", "torch"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and ("CORRECT" in printed) != ("WRONG" in printed)
    steps = int(next(item for item in TINY_SETS if item.startswith("model.halt_max_steps=")).split("=")[1])
    assert f"model answer after {steps} steps" in printed
    (figure,) = written
    titles = [axes.get_title() for axes in figure.axes if axes.get_title()]
    assert titles[0] == "question" and titles[-1] == "expected"
    assert [title.split(":")[0] for title in titles[1:-1]] == [f"step {index}" for index in range(1, steps + 1)]
    pixels = read_png(out)
    assert plots.README_WIDTH * plots.README_DPI >= pixels.shape[1] > pixels.shape[0] > 100
    assert pixels.shape[:2] == tuple(round(size * figure.dpi) for size in reversed(figure.get_size_inches()))
    # tiny_run trained on <root>/data (its test split) into <root>/run: no directories above those
    assert figure._suptitle.get_text() == "data/test, example 1 - run/step_00000004.pt"


def test_solve_figure_panels_mark_wrong_cells_and_halting():
    # A 4x4 maze: S at 0, G at 15; the answer after step 1 misses two path cells, step 2 is right.
    question = np.array([3, 2, 1, 1, 1, 2, 1, 1, 1, 2, 2, 2, 1, 1, 1, 4])
    labels = np.array([3, 5, 1, 1, 1, 5, 1, 1, 1, 5, 5, 5, 1, 1, 1, 4])
    first = labels.copy()
    first[[9, 10]] = 2
    figure = plots.solve_figure(question, [first, labels], [-1.5, 2.0], labels, vocab_size=6)
    titled = [axes for axes in figure.axes if axes.get_title()]
    titles = [axes.get_title() for axes in titled]
    assert titles[0] == "question" and titles[-1] == "expected" and len(titles) == 4
    assert "q_halt -1.50" in titles[1] and "wrong (2 cells)" in titles[1] and "halts" not in titles[1]
    assert titles[2] == "step 2: q_halt +2.00\nsolved - halts"
    crosses = titled[1].collections[0].get_offsets()
    assert sorted(map(tuple, np.asarray(crosses).tolist())) == [(1.0, 2.0), (2.0, 2.0)]  # (column, row)
    assert not titled[2].collections
    image = titled[1].get_images()[0].get_array()
    assert image.shape == (4, 4) and image[0, 0] == 3 and image[3, 3] == 4


def test_solve_figure_draws_other_data_as_a_token_grid(tmp_path):
    rng = np.random.default_rng(0)
    question = rng.integers(0, 11, size=81)
    labels = rng.integers(1, 11, size=81)
    figure = plots.solve_figure(question, [labels, labels], [0.5, 0.7], labels, vocab_size=11)
    question_axes = figure.axes[0]
    assert question_axes.get_images()[0].get_array().shape == (9, 9)
    assert len(question_axes.texts) == 81  # the token ids are written in the cells
    plots.save_figure(figure, tmp_path / "sudoku.png")
    assert read_png(tmp_path / "sudoku.png").ndim == 3


def test_plot_bad_arguments_give_one_line(tiny_run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["plot", str(empty), "--out", str(tmp_path / "x.png")]) == 2
    one_error_line(capsys, f"{empty}: no metrics.jsonl")
    assert main(["plot", str(tiny_run), "--out", str(tmp_path / "x.nope")]) == 2
    one_error_line(capsys, "unknown image type '.nope'")
    assert main(["plot", str(tiny_run)]) == 2
    one_error_line(capsys, "--out")
    assert main(["solve", "--checkpoint", str(tiny_run), "--image", str(tmp_path / "x.nope"), "--device", "cpu"]) == 2
    one_error_line(capsys, "unknown image type")


def test_solve_figure_wraps_a_long_run_into_rows_that_fit_the_readme():
    """16 supervision steps of a 30x30 maze: 18 square panels in rows no wider than README_WIDTH,
    with no panel (nor its title) overlapping another."""
    from trm_fast.data.maze import generate_mazes

    inputs, labels = generate_mazes(1, size=30, style="random")
    question, labels = inputs[0].astype(np.int64), labels[0].astype(np.int64)
    path_cells = np.flatnonzero(labels == 5)
    answers = []
    for step in range(16):
        answer = labels.copy()
        answer[path_cells[: len(path_cells) * (15 - step) // 15]] = 2  # the path grows step by step
        answers.append(answer)
    figure = plots.solve_figure(question, answers, np.linspace(-3, 3, 16), labels, vocab_size=6,
                                title="maze-30x30-hard-1k/test, example 3 - maze-paper-20261201/step_00052000.pt")
    width, height = figure.get_size_inches() * figure.dpi
    assert width <= plots.README_WIDTH * plots.README_DPI
    panels = figure.axes
    assert len(panels) == 18
    assert [axes.get_title().split(":")[0] for axes in panels[1:-1]] == [f"step {k}" for k in range(1, 17)]
    rows = sorted({round(axes.get_position().y0, 6) for axes in panels})
    assert len(rows) >= 3  # wrapped, not one strip
    renderer = figure.canvas.get_renderer()
    boxes = [axes.get_tightbbox(renderer) for axes in panels]  # the grid and its title
    for i, box in enumerate(boxes):
        assert 0 <= box.x0 and box.x1 <= width and 0 <= box.y0 and box.y1 <= height
        for other in boxes[i + 1:]:
            assert not box.overlaps(other), (box, other)
    sizes = {tuple(np.round(axes.get_window_extent(renderer).size)) for axes in panels}
    assert len(sizes) == 1 and len(set(next(iter(sizes)))) == 1  # equal square panels
    cell_pixels = next(iter(sizes))[0] / 30
    assert cell_pixels >= 4  # a cell is still visible at README width


def test_solve_title_names_the_data_folder_and_the_run_only(tmp_path):
    run = tmp_path / "runs" / "maze-cpu-20261128"
    (run / "checkpoints").mkdir(parents=True)
    for step in (2, 4):
        (run / "checkpoints" / f"step_{step:08d}.pt").write_bytes(b"")
    data = tmp_path / "data" / "maze-6x6-seed0" / "test"
    assert plots.solve_title(data, 3, run) == "maze-6x6-seed0/test, example 3 - maze-cpu-20261128/step_00000004.pt"
    assert plots.solve_title("mazes.csv", 0, run / "checkpoints" / "step_00000002.pt") == \
        "mazes.csv, example 0 - maze-cpu-20261128/step_00000002.pt"
    assert plots.solve_title(tmp_path / "csv" / "mazes.csv", 1, "step_50000") == "csv/mazes.csv, example 1 - step_50000"


def test_ablation_figure_of_the_committed_study_hides_no_curve_and_names_its_data():
    """docs/ablation: no-ema's training loss equals the baseline's (EMA does not touch training);
    the baseline must still show, the ticks must be readable, the title must say the data."""
    report = json.loads((Path(__file__).resolve().parents[1] / "docs" / "ablation" / "ablation.json").read_text())
    assert report["settings"]["base"]["maze"]["style"] == "corridors" and report["settings"]["base"]["maze"]["size"] == 6
    figure = plots.ablation_figure(report)
    width, _height = figure.get_size_inches() * figure.dpi
    assert width <= plots.README_WIDTH * plots.README_DPI
    title = figure._suptitle.get_text()
    assert "600 steps per variant" in title and "trained on 6x6 corridor-style mazes (2,000 train / 500 test" in title

    loss_axes, exact_axes = figure.axes
    baseline, no_ema = loss_axes.get_lines()[:2]
    assert list(baseline.get_ydata()) == list(no_ema.get_ydata())
    assert baseline.get_zorder() < no_ema.get_zorder() and baseline.get_linewidth() >= 2 * no_ema.get_linewidth()
    assert "training loss = baseline's" in no_ema.get_label()
    held_out = exact_axes.get_lines()  # each drawn over the one before, thinner, so every one shows
    assert all(a.get_zorder() < b.get_zorder() and a.get_linewidth() > b.get_linewidth() and
               a.get_markersize() > b.get_markersize() for a, b in zip(held_out, held_out[1:]))
    assert len({line.get_marker() for line in held_out}) == len(held_out)

    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    for axes in figure.axes:
        for axis in (axes.xaxis, axes.yaxis):
            low, high = sorted(axis.get_view_interval())
            labels = [tick.label1 for tick in axis.get_major_ticks() + axis.get_minor_ticks()
                      if low <= tick.get_loc() <= high and tick.label1.get_visible() and tick.label1.get_text()]
            assert 3 <= len(labels) <= 8, [label.get_text() for label in labels]
            assert all(label.get_fontsize() >= 8 for label in labels)
            boxes = [label.get_window_extent(renderer) for label in labels]
            assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
