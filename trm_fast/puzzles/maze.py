"""Mazes: the built-in generator (trm_fast.data.maze, folders in trm_fast.data.maze_folders), the
Maze-Hard CSV format, and mazes as text rows over "# SGo"."""
from __future__ import annotations

import math

import numpy as np

from trm_fast.data import maze as maze_lib
from trm_fast.data.errors import DataError
from trm_fast.puzzles.base import PuzzleKind, lookup_cells

QUESTION_CHARS = maze_lib.CHARSET[:4]  # "# SG": a question holds no path
_STYLE_WORDS = {"corridors": "corridor-style", "random": "random-wall", "mixed": "corridor and random-wall"}


class MazeKind(PuzzleKind):
    name = "maze"
    settings_field = "maze"
    default_presets = ("maze-paper", "maze-cpu")
    guess_rank = 10  # vocabulary 6 on a square grid: also what a 4x4 Sudoku looks like

    # -- the built-in generator

    def settings_problem(self, maze):
        if maze.size < 3:
            return f"maze.size must be >= 3, got {maze.size}"
        if not (maze.num_train >= 1 and maze.num_test >= 1):
            return "maze.num_train and maze.num_test must be >= 1"
        if not 0.0 <= maze.wall_share_min <= maze.wall_share_max < 1.0:
            return (f"maze.wall_share_min/max must satisfy 0 <= min <= max < 1, got "
                    f"{maze.wall_share_min}/{maze.wall_share_max}")
        return None

    def cache_name(self, maze) -> str:
        name = f"maze-{maze.size}x{maze.size}-train{maze.num_train}-test{maze.num_test}-seed{maze.seed}"
        if maze.style != "corridors":
            name += f"-{maze.style}{maze.wall_share_min:g}-{maze.wall_share_max:g}"
        return name + ("-aug" if maze.augment else "")

    def build(self, folder, maze, log=print):
        from trm_fast.data.maze_folders import build_maze_dataset

        return build_maze_dataset(folder, size=maze.size, num_train=maze.num_train, num_test=maze.num_test,
                                  seed=maze.seed, augment=maze.augment, style=maze.style,
                                  wall_share=(maze.wall_share_min, maze.wall_share_max))

    def small_settings(self):
        from trm_fast.config import MazeSettings

        return MazeSettings(size=5, num_train=4, num_test=4, style="corridors")

    def data_shape(self, maze):
        return maze_lib.VOCAB_SIZE, maze.size ** 2, float(maze.num_train)  # one group, one example per maze

    def describe_settings(self, maze) -> str:
        return f"{maze.size}x{maze.size} {_STYLE_WORDS[maze.style]} mazes"

    def study_data_summary(self, maze) -> str:
        style = _STYLE_WORDS[maze.style] + ("" if maze.style == "corridors" else f" ({maze.wall_share_min:g}-{maze.wall_share_max:g} walls)")
        return (f"{maze.size}x{maze.size} {style} mazes ({maze.num_train:,} train / {maze.num_test:,} test, "
                f"generator seed {maze.seed})")

    def study_held_out_text(self, maze) -> str:
        return (f"the test split of the built-in maze data ({maze.num_test:,} mazes made by the same generator with "
                "the same seed on a separate stream; no training maze equals a test maze, not even up to the 8 "
                "symmetries)")

    # -- recognising and reading data

    def guess_shape(self, vocab_size, seq_len):
        return vocab_size == maze_lib.VOCAB_SIZE and math.isqrt(seq_len) ** 2 == seq_len, None

    def is_csv(self, path) -> bool:
        """Any CSV another kind does not claim: the maze reader says what is wrong with a file that
        is not one."""
        return True

    def read_csv(self, path):
        from trm_fast.data.csv_format import read_maze_csv
        from trm_fast.data.maze_folders import grouped_examples

        records = read_maze_csv(path)
        arrays = grouped_examples(records.inputs, records.labels, augment=False, size=records.size)
        return records.inputs, records.labels, arrays, maze_lib.VOCAB_SIZE, None

    # -- the command line

    def add_data_command(self, kinds) -> None:
        maze = kinds.add_parser("maze", help="generated mazes with a unique shortest path")
        maze.add_argument("--out", required=True, metavar="DIR", help="dataset folder to write (reference layout: train/, test/)")
        maze.add_argument("--style", choices=maze_lib.STYLES, default="random",
                          help="random: walls cell by cell, as Maze-Hard; corridors: spanning-tree corridors; mixed: each maze one of the two")
        maze.add_argument("--size", type=int, default=30, help="grid side in cells")
        maze.add_argument("--num-train", type=int, default=1000, help="training mazes")
        maze.add_argument("--num-test", type=int, default=1000, help="test mazes (none equal to a training maze up to symmetry)")
        maze.add_argument("--seed", type=int, default=0, help="generator seed")
        maze.add_argument("--wall-share-min", type=float, default=maze_lib.DEFAULT_WALL_SHARE[0],
                          help="random style: least share of wall cells of a maze")
        maze.add_argument("--wall-share-max", type=float, default=maze_lib.DEFAULT_WALL_SHARE[1],
                          help="random style: largest share of wall cells of a maze")
        maze.add_argument("--csv", action="store_true", help="also write train.csv and test.csv in the Maze-Hard CSV format")
        maze.set_defaults(handler=cmd_data_maze)

    def convert_csv(self, args):
        from trm_fast.cli import UsageError
        from trm_fast.data.csv_format import convert_maze_csv

        if args.num_aug or args.subsample is not None:
            raise UsageError("--num-aug and --subsample are for Sudoku CSV files; maze files take --augment")
        return convert_maze_csv(args.train, args.test, args.out, augment=args.augment), "mazes"

    # -- checkpoints and shipped models

    def puzzle_info(self, maze: dict) -> dict:
        return {"kind": "maze", "size": maze["size"], "style": maze["style"]}

    def write_held_out_sets(self, folder, train, test, run_data_dir, test_file, log):
        from trm_fast.data.csv_format import write_maze_csv

        size = int(round(train.inputs.shape[1] ** 0.5))
        write_maze_csv(folder / test_file, test.inputs, test.labels)
        seen = {maze_lib.canonical_key(grid) for grid in np.concatenate([train.inputs, test.inputs]).reshape(-1, size, size)}
        for file, style in (("seed1-random.csv", "random"), ("seed1-corridors.csv", "corridors")):
            inputs, labels = maze_lib.generate_mazes(1000, size, seed=1, stream=1, style=style)
            unseen = np.array([maze_lib.canonical_key(grid.reshape(size, size)) not in seen for grid in inputs])
            log(f"{file}: {int((~unseen).sum())} of 1000 equal a training or test maze up to symmetry; keeping 500")
            write_maze_csv(folder / file, inputs[unseen][:500], labels[unseen][:500])

    # -- pictures: walls, open cells, S, G and the path in colour

    legend_inches = 0.35

    def panel_cell_inches(self, side):
        return 0.045

    def draw_panel(self, axes, tokens, question, wrong, shape, grid_shape, vocab_size):
        from matplotlib.colors import ListedColormap

        from trm_fast.plots import MAZE_COLOURS, _as_grid

        grid = _as_grid(np.clip(tokens, 0, len(MAZE_COLOURS) - 1), grid_shape, 0)
        axes.imshow(grid, cmap=ListedColormap(MAZE_COLOURS), interpolation="nearest", vmin=-0.5,
                    vmax=len(MAZE_COLOURS) - 0.5)

    def draw_legend(self, figure):
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch

        from trm_fast.plots import MAZE_COLOURS, MAZE_NAMES

        handles = [Patch(facecolor=c, edgecolor="gray", label=n) for c, n in zip(MAZE_COLOURS[1:], MAZE_NAMES[1:])]
        handles.append(Line2D([], [], marker="x", color="red", linestyle="", label="wrong cell"))
        figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False,
                      handlelength=1.2, columnspacing=1.0)

    # -- puzzles as text and integers

    def describe_format(self, fmt) -> str:
        return f"{fmt.side}x{fmt.side} mazes"

    def text_cells(self, text):
        return [ch for ch in text if ch not in "\r\n"]

    def values_from_cells(self, fmt, cells, where):
        return lookup_cells(cells, QUESTION_CHARS, fmt.side, where, offset=1)

    def value_range(self, fmt):
        return 1, len(QUESTION_CHARS), "maze tokens (1 wall, 2 open, 3 S, 4 G)"

    def tokens_from_values(self, fmt, values, where):
        for token, name in ((3, "S"), (4, "G")):
            found = int((values == token).sum())
            if found != 1:
                raise DataError(where, f"expected exactly one '{name}' cell, found {found}")
        return values

    def answer_text(self, fmt, tokens):
        return maze_lib.render_maze(np.clip(tokens, 0, maze_lib.VOCAB_SIZE - 1), fmt.side)

    def render(self, tokens, shape, marks=None):
        side = math.isqrt(tokens.size)
        if side * side != tokens.size:
            return super().render(tokens, shape, marks)
        return maze_lib.render_maze(np.clip(tokens, 0, maze_lib.VOCAB_SIZE - 1), side)


def cmd_data_maze(args) -> int:
    """`trm-fast data maze`: build a folder, print a solved test maze (and write CSV files)."""
    from trm_fast.data import build_maze_dataset, load_split, write_maze_csv

    folder = build_maze_dataset(args.out, size=args.size, num_train=args.num_train, num_test=args.num_test,
                                seed=args.seed, style=args.style, wall_share=(args.wall_share_min, args.wall_share_max))
    print(f"wrote {folder}: {args.num_train} train + {args.num_test} test {args.size}x{args.size} {args.style}-style mazes "
          f"(reference layout; disjoint up to symmetry)")
    for split in ("train", "test"):
        data = load_split(folder, split)
        if args.csv:
            print(f"wrote {write_maze_csv(folder / f'{split}.csv', data.inputs, data.labels)}")
        if split == "test":
            print("test maze 0, solved:")
            print(maze_lib.render_maze(data.labels[0], args.size))
    return 0


KIND = MazeKind()
