"""Data layer: maze and Sudoku generators, the reference dataset folder format, maze and Sudoku
CSV files, batch loaders.

    from trm_fast.data import build_maze_dataset, load_split, TrainSampler, EvalBatches
    folder = build_maze_dataset("data/maze-30", size=30, num_train=1000, num_test=1000, seed=0)
    train = TrainSampler(load_split(folder, "train"), global_batch_size=768, rank=0, world_size=1)
    batch = next(train)   # inputs int32 [b, 900], labels int64 [b, 900], puzzle_identifiers int32 [b]
    sudoku = build_sudoku_dataset("data/sudoku-9", size=9, num_train=1000, num_test=1000, num_aug=1000)
"""
from trm_fast.data.csv_format import (
    MazeRecords,
    SudokuRecords,
    convert_maze_csv,
    convert_sudoku_csv,
    is_sudoku_csv,
    maze_string_to_tokens,
    read_maze_csv,
    read_sudoku_csv,
    tokens_to_maze_string,
    write_maze_csv,
    write_sudoku_csv,
)
from trm_fast.data.dataset import (
    PuzzleMetadata,
    PuzzleSet,
    PuzzleSplit,
    load_split,
    write_identifiers,
    write_split,
)
from trm_fast.data.errors import DataError
from trm_fast.data.maze_folders import build_maze_dataset, write_maze_split
from trm_fast.data.loader import IGNORE_INDEX, EvalBatches, TrainSampler
from trm_fast.data.maze import (
    CHARSET,
    STYLES,
    VOCAB_SIZE,
    check_maze_pair,
    default_min_path_length,
    dihedral,
    generate_mazes,
    render_maze,
    shortest_path_count,
)
from trm_fast.data.sudoku import (
    build_sudoku_dataset,
    canonical_key as sudoku_canonical_key,
    check_sudoku_pair,
    generate_sudokus,
    render_sudoku,
    solve_sudoku,
    sudoku_geometry_of,
    sudoku_rating,
)

__all__ = [
    "CHARSET", "STYLES", "VOCAB_SIZE", "IGNORE_INDEX", "DataError",
    "generate_mazes", "render_maze", "dihedral", "shortest_path_count", "check_maze_pair",
    "default_min_path_length",
    "PuzzleMetadata", "PuzzleSet", "PuzzleSplit", "load_split", "write_split", "write_maze_split",
    "write_identifiers", "build_maze_dataset",
    "MazeRecords", "read_maze_csv", "write_maze_csv", "convert_maze_csv", "maze_string_to_tokens",
    "tokens_to_maze_string",
    "TrainSampler", "EvalBatches",
    "generate_sudokus", "solve_sudoku", "sudoku_rating", "sudoku_canonical_key", "check_sudoku_pair",
    "render_sudoku", "build_sudoku_dataset", "sudoku_geometry_of",
    "SudokuRecords", "read_sudoku_csv", "write_sudoku_csv", "convert_sudoku_csv", "is_sudoku_csv",
]
