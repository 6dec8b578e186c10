"""Sudoku: solver, generator (uniqueness, minimality, rating, determinism), augmentation, symmetry
key, train/test disjointness, folders and CSV files, every bad input.

The checks use helpers written here from scratch (set-based backtracking, explicit symmetry
enumeration), independent of the bit-mask code in trm_fast.data.sudoku."""
import itertools
import json
import re

import numpy as np
import pytest

from trm_fast.data import csv_format as cf
from trm_fast.data import dataset as ds
from trm_fast.data import sudoku as sd
from trm_fast.data.errors import DataError

# ---------------------------------------------------------------------------------------------
# Independent reference helpers


def units_of(R, C):
    N = R * C
    rows = [[r * N + c for c in range(N)] for r in range(N)]
    cols = [[r * N + c for r in range(N)] for c in range(N)]
    boxes = [[(b * R + i) * N + s * C + j for i in range(R) for j in range(C)] for b in range(C) for s in range(R)]
    return rows + cols + boxes


def peers_of(R, C):
    units = units_of(R, C)
    return [sorted({p for u in units if cell in u for p in u} - {cell}) for cell in range((R * C) ** 2)]


def count_by_backtracking(grid, R, C, limit=2):
    """Plain backtracking over the emptiest cell, candidates from row/column/box sets: (count, first solution)."""
    N = R * C
    grid = [int(v) for v in np.asarray(grid).reshape(-1)]
    peers = peers_of(R, C)
    for cell, value in enumerate(grid):  # givens must not clash
        if value and any(grid[p] == value for p in peers[cell]):
            return 0, None
    found = []

    def go():
        best, options = None, None
        for cell in range(N * N):
            if grid[cell] == 0:
                allowed = set(range(1, N + 1)) - {grid[p] for p in peers[cell]}
                if options is None or len(allowed) < len(options):
                    best, options = cell, allowed
        if best is None:
            found.append(list(grid))
            return
        for value in sorted(options):
            grid[best] = value
            go()
            grid[best] = 0
            if len(found) >= limit:
                return

    go()
    return len(found), (np.array(found[0], np.uint8) if found else None)


def rating_by_sets(grid, R, C):
    """The rating as defined in trm_fast.data.sudoku, with Python sets: naked + hidden singles to a
    fixed point, branch on the fewest-candidate cell (lowest index), count every trial assignment of
    the whole search up to 2 solutions. Returns (solutions, guesses)."""
    N = R * C
    units, peers = units_of(R, C), peers_of(R, C)
    start = [set(range(1, N + 1)) if v == 0 else {int(v)} for v in np.asarray(grid).reshape(-1)]
    state = {"solutions": 0, "guesses": 0}

    def propagate(cands):
        changed = True
        while changed:
            changed = False
            for cell in range(N * N):
                if len(cands[cell]) == 1:
                    (digit,) = cands[cell]
                    for p in peers[cell]:
                        if digit in cands[p]:
                            cands[p] = cands[p] - {digit}
                            changed = True
                            if not cands[p]:
                                return None
            for unit in units:
                for digit in range(1, N + 1):
                    places = [cell for cell in unit if digit in cands[cell]]
                    if not places:
                        return None
                    if len(places) == 1 and len(cands[places[0]]) > 1:
                        cands[places[0]] = {digit}
                        changed = True
        return cands

    def search(cands):
        cands = propagate(cands)
        if cands is None:
            return
        open_cells = [cell for cell in range(N * N) if len(cands[cell]) > 1]
        if not open_cells:
            state["solutions"] += 1
            return
        best = min(open_cells, key=lambda cell: (len(cands[cell]), cell))
        for digit in sorted(cands[best]):
            state["guesses"] += 1
            child = [set(c) for c in cands]
            child[best] = {digit}
            search(child)
            if state["solutions"] >= 2:
                return

    search(start)
    return state["solutions"], state["guesses"]


def is_solved_grid(grid, R, C):
    N = R * C
    flat = np.asarray(grid).reshape(-1)
    return all(sorted(int(flat[i]) for i in unit) == list(range(1, N + 1)) for unit in units_of(R, C))


def geometric_index_maps(R, C, with_transpose):
    """Every cell permutation of the Sudoku group without relabelling, enumerated explicitly:
    [K, N*N] source indices (new[i] = old[source[i]])."""
    N = R * C

    def grouped(groups, size):
        out = []
        for order in itertools.permutations(range(groups)):
            for inner in itertools.product(*[list(itertools.permutations(range(size)))] * groups):
                out.append([order[g] * size + inner[g][k] for g in range(groups) for k in range(size)])
        return out

    maps = []
    for transpose in ((False, True) if with_transpose else (False,)):
        for rows in grouped(C, R):
            for cols in grouped(R, C):
                maps.append([(cols[j] * N + rows[i]) if transpose else (rows[i] * N + cols[j])
                             for i in range(N) for j in range(N)])
    return np.array(maps)


def relabel_canonical(grids):
    """Digits renumbered in order of first appearance (row-major), blanks kept: [M, n] -> [M, n]."""
    grids = np.asarray(grids)
    N = int(round(grids.shape[1] ** 0.5))
    present = grids[:, :, None] == np.arange(1, N + 1)
    first = np.where(present.any(axis=1), present.argmax(axis=1), 10 ** 6)  # [M, N]
    rank = np.argsort(np.argsort(first, axis=1), axis=1) + 1
    mapping = np.concatenate([np.zeros((len(grids), 1), int), rank], axis=1)
    return np.take_along_axis(mapping, grids.astype(int), axis=1)


def equivalence_forms(grid, maps):
    """All relabel-canonical forms of the geometric images of one grid (a set of bytes)."""
    images = np.asarray(grid).reshape(-1)[maps]
    return {row.tobytes() for row in relabel_canonical(images).astype(np.uint8)}


MAPS_6 = geometric_index_maps(2, 3, with_transpose=False)  # 3456 = 48 row maps x 72 column maps
MAPS_4 = geometric_index_maps(2, 2, with_transpose=True)  # 128


# A classic puzzle with a unique solution (public domain example), and its solution.
CLASSIC = "530070000600195000098000060800060003400803001700020006060000280000419005000080079"
CLASSIC_SOLUTION = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"


def digits(text):
    return np.array([0 if ch in ".0" else int(ch) for ch in text], np.uint8)


# ---------------------------------------------------------------------------------------------
# Solver


def test_solver_on_hand_made_puzzles():
    result = sd.solve_sudoku(digits(CLASSIC))
    assert result.count == 1 and "".join(map(str, result.solution)) == CLASSIC_SOLUTION
    found, first = count_by_backtracking(digits(CLASSIC), 3, 3)
    assert found == 1 and np.array_equal(first, digits(CLASSIC_SOLUTION))
    assert result.guesses == rating_by_sets(digits(CLASSIC), 3, 3)[1] == 0  # singles suffice
    # A "deadly rectangle" of the solution (a b / b a in two rows, two columns, exactly two boxes)
    # emptied from the full grid leaves two solutions.
    solution = digits(CLASSIC_SOLUTION).reshape(9, 9)
    two = None
    for r1, r2 in itertools.combinations(range(9), 2):
        for c1, c2 in itertools.combinations(range(9), 2):
            a, b = solution[r1, c1], solution[r1, c2]
            if solution[r2, c1] == b and solution[r2, c2] == a and (r1 // 3 == r2 // 3) != (c1 // 3 == c2 // 3):
                two = solution.copy()
                two[[r1, r1, r2, r2], [c1, c2, c1, c2]] = 0
                break
        if two is not None:
            break
    assert two is not None
    assert sd.solve_sudoku(two).count == 2 == count_by_backtracking(two, 3, 3)[0]
    with pytest.raises(DataError, match="more than one solution"):
        sd.sudoku_rating(two)
    clash = digits(CLASSIC)
    clash[2] = 5  # a second 5 in row 1
    assert sd.solve_sudoku(clash).count == 0 == count_by_backtracking(clash, 3, 3)[0]
    assert sd.solve_sudoku(np.zeros(36, np.uint8), sd.geometry(6), limit=3).count == 3  # the empty grid


@pytest.mark.parametrize("size, count, min_rating", [(4, 8, 0), (6, 12, 0), (6, 4, 2), (9, 3, 0), (9, 2, 10)])
def test_generated_puzzles_are_unique_minimal_and_rated_as_defined(size, count, min_rating):
    geom = sd.geometry(size)
    R, C = geom.box_rows, geom.box_cols
    questions, solutions, ratings = sd.generate_sudokus(count, size, min_rating=min_rating, seed=3, return_ratings=True)
    assert questions.dtype == solutions.dtype == np.uint8 and questions.shape == (count, size * size)
    for question, solution, rating in zip(questions, solutions, ratings):
        assert is_solved_grid(solution, R, C)
        given = question > 0
        assert np.array_equal(question[given], solution[given])
        found, first = count_by_backtracking(question, R, C)
        assert found == 1 and np.array_equal(first, solution)
        assert rating_by_sets(question, R, C) == (1, rating) and rating >= min_rating
        # Minimal: without any one of its givens the puzzle has a second solution.
        for cell in np.flatnonzero(given)[: 8 if size == 9 else None]:
            fewer = question.copy()
            fewer[cell] = 0
            assert count_by_backtracking(fewer, R, C)[0] == 2


def test_generation_is_deterministic_per_seed_and_stream():
    a = sd.generate_sudokus(10, 6, seed=5)
    b = sd.generate_sudokus(10, 6, seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], sd.generate_sudokus(10, 6, seed=6)[0])
    assert not np.array_equal(a[0], sd.generate_sudokus(10, 6, seed=5, stream=1)[0])
    np.testing.assert_array_equal(sd.generate_sudokus(4, 6, seed=5)[0], a[0][:4])  # a prefix is the same puzzles


def test_worker_processes_give_the_same_puzzles():
    one = sd.generate_sudokus(40, 6, seed=2, workers=1)
    two = sd.generate_sudokus(40, 6, seed=2, workers=2)
    assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1])


@pytest.mark.parametrize("size, count, maps", [(4, 20, MAPS_4), (6, 25, MAPS_6)])
def test_no_two_puzzles_are_equivalent_and_exclude_is_honoured(size, count, maps):
    # 4x4 has ~33 classes of minimal puzzles, so 20 random ones would collide without de-duplication.
    questions, _ = sd.generate_sudokus(count, size, seed=1)
    forms = [equivalence_forms(q, maps) for q in questions]
    assert all(not (forms[i] & forms[j]) for i in range(count) for j in range(i))
    seen = {sd.canonical_key(q) for q in questions}
    again, _ = sd.generate_sudokus(5, size, seed=1, exclude=seen)
    assert not any(equivalence_forms(q, maps) & f for q in again for f in forms)
    # 4x4 has only a handful of distinct puzzles: asking for many more is a clear error.
    with pytest.raises(DataError, match="no new 4x4"):
        sd.generate_sudokus(500, 4, seed=0)


def test_canonical_key_is_invariant_under_the_group_and_separates_puzzles():
    rng = np.random.default_rng(0)
    for size in (9, 6, 4):
        geom = sd.geometry(size)
        questions, solutions = sd.generate_sudokus(3, size, seed=7)
        for question, solution in zip(questions, solutions):
            key = sd.canonical_key(question, geom)
            transforms = sd.random_transforms(geom, 20, rng)
            images = sd.apply_transforms(np.repeat(question[None], 20, axis=0), transforms, geom)
            assert {sd.canonical_key(image, geom) for image in images} == {key}
            if size == 4:  # the transposed image too (in the group when the boxes are square)
                assert sd.canonical_key(question.reshape(4, 4).T.reshape(-1), geom) == key
            more = question.copy()
            blank = np.flatnonzero(question == 0)[0]
            more[blank] = solution[blank]  # one more given: another puzzle, another key
            assert sd.canonical_key(more, geom) != key
        keys = {sd.canonical_key(q, geom) for q in questions}
        assert len(keys) == 3
        # The same pattern of givens with other digits (taken from another solution) is another puzzle
        # (9x9; on 4x4 it may well be an image of the first one).
        pattern = questions[0] > 0
        assert size != 9 or sd.canonical_key(np.where(pattern, solutions[1], 0), geom) != sd.canonical_key(questions[0], geom)


# ---------------------------------------------------------------------------------------------
# Augmentation


def find_group_element(original_q, original_a, image_q, image_a, maps):
    """Is there one cell map + digit relabelling that sends original_a to image_a AND original_q to
    image_q? (Explicit search over the enumerated group.)"""
    answers = original_a[maps]  # [K, n]
    relabel = np.zeros((len(maps), answers.max() + 1), int)
    first_row = answers[:, : int(round(len(original_a) ** 0.5))]
    relabel[np.arange(len(maps))[:, None], first_row] = image_a[: first_row.shape[1]]
    mapped_a = np.take_along_axis(relabel, answers.astype(int), axis=1)
    mapped_q = np.take_along_axis(relabel, original_q[maps].astype(int), axis=1)
    return bool(((mapped_a == image_a).all(axis=1) & (mapped_q == image_q).all(axis=1)).any())


@pytest.mark.parametrize("size, maps", [(6, MAPS_6), (4, MAPS_4)])
def test_every_augmented_pair_is_the_same_symmetry_applied_to_question_and_answer(size, maps):
    geom = sd.geometry(size)
    questions, solutions = sd.generate_sudokus(3, size, seed=4)
    inputs, labels = sd.augment_sudokus(questions, solutions, 15, geom, np.random.default_rng(1))
    assert inputs.shape == (3 * 16, size * size)
    transposed = 0
    for k in range(len(inputs)):
        q, a = questions[k // 16], solutions[k // 16]
        if k % 16 == 0:  # the original first, untouched
            assert np.array_equal(inputs[k], q) and np.array_equal(labels[k], a)
            continue
        assert is_solved_grid(labels[k], geom.box_rows, geom.box_cols)
        given = inputs[k] > 0
        assert np.array_equal(inputs[k][given], labels[k][given]) and given.sum() == (q > 0).sum()
        assert find_group_element(q, a, inputs[k], labels[k], maps)
        transposed += not find_group_element(q, a, inputs[k], labels[k], maps[: len(maps) // 2]) if size == 4 else 0
    if size == 4:
        assert transposed > 0  # some copies needed the transpose half of the group


def test_augmented_nine_by_nine_pairs_stay_valid_and_unique():
    geom = sd.geometry(9)
    questions, solutions = sd.generate_sudokus(2, 9, seed=8)
    inputs, labels = sd.augment_sudokus(questions, solutions, 6, geom, np.random.default_rng(3))
    for q, a in zip(inputs, labels):
        assert is_solved_grid(a, 3, 3) and np.array_equal(q[q > 0], a[q > 0])
        found, first = count_by_backtracking(q, 3, 3)
        assert found == 1 and np.array_equal(first, a)


def test_transforms_match_an_explicit_construction():
    geom = sd.geometry(9)
    grid = np.arange(81) % 10
    transforms = sd.random_transforms(geom, 30, np.random.default_rng(5))
    out = sd.apply_transforms(np.repeat(grid[None], 30, axis=0).astype(np.uint8), transforms, geom)
    for k in range(30):
        rows, cols = transforms.rows[k], transforms.cols[k]
        # bands stay bands and stacks stay stacks
        assert all(len({int(rows[b * 3 + i]) // 3 for i in range(3)}) == 1 for b in range(3))
        assert all(len({int(cols[s * 3 + j]) // 3 for j in range(3)}) == 1 for s in range(3))
        source = grid.reshape(9, 9).T if transforms.transpose[k] else grid.reshape(9, 9)
        expected = [transforms.digits[k][source[rows[i], cols[j]]] for i in range(9) for j in range(9)]
        assert out[k].tolist() == expected and transforms.digits[k][0] == 0
    assert 0 < transforms.transpose.sum() < 30
    assert not sd.random_transforms(sd.geometry(6), 50, np.random.default_rng(0)).transpose.any()


# ---------------------------------------------------------------------------------------------
# Folders


def test_build_sudoku_dataset_layout_tokens_and_disjointness(tmp_path):
    out = sd.build_sudoku_dataset(tmp_path / "s6", size=6, num_train=30, num_test=20, num_aug=3, seed=1)
    train, test = ds.load_split(out, "train"), ds.load_split(out, "test")
    assert json.loads((out / "identifiers.json").read_text()) == ["<blank>"]
    for split, groups, per_group in ((train, 30, 4), (test, 20, 1)):
        m = split.metadata
        assert (m.vocab_size, m.seq_len, m.pad_id, m.ignore_label_id, m.num_puzzle_identifiers) == (8, 36, 0, 0, 1)
        data = split.get_set()
        assert data.num_groups == groups and data.num_puzzles == data.num_examples == groups * per_group
        np.testing.assert_array_equal(data.group_indices, np.arange(0, groups * per_group + 1, per_group))
        np.testing.assert_array_equal(data.puzzle_identifiers, 0)
        inputs, labels = np.asarray(data.inputs), np.asarray(data.labels)
        assert inputs.min() >= 1 and inputs.max() <= 7 and labels.min() >= 2 and labels.max() <= 7  # every cell supervised
        given = inputs > 1
        assert np.array_equal(inputs[given], labels[given])
    # Train group g: its original first, then 3 images of it; the originals are the generator's puzzles.
    questions, solutions = sd.generate_sudokus(20, 6, seed=1, stream=1)
    np.testing.assert_array_equal(sd.tokens_to_digits(test.inputs), questions)
    train_q = sd.tokens_to_digits(train.inputs).reshape(30, 4, 36)
    train_a = sd.tokens_to_digits(train.labels).reshape(30, 4, 36)
    for g in range(30):
        for k in range(1, 4):
            assert find_group_element(train_q[g, 0], train_a[g, 0], train_q[g, k], train_a[g, k], MAPS_6)
    # No test puzzle equals a training puzzle or any augmented copy, even up to the symmetries.
    train_forms = set().union(*(equivalence_forms(q, MAPS_6) for q in train_q[:, 0]))
    assert not any(equivalence_forms(q, MAPS_6) & train_forms for q in questions)
    assert sd.sudoku_geometry_of(out) == sd.geometry(6) and sd.sudoku_geometry_of(out / "test") == sd.geometry(6)


def test_train_and_test_are_disjoint_up_to_symmetry_where_collisions_are_likely(tmp_path):
    out = sd.build_sudoku_dataset(tmp_path / "s4", size=4, num_train=12, num_test=10, num_aug=2, seed=0)
    train = sd.tokens_to_digits(ds.load_split(out, "train").inputs)
    test = sd.tokens_to_digits(ds.load_split(out, "test").inputs)
    train_forms = set().union(*(equivalence_forms(q, MAPS_4) for q in train))  # originals and copies
    assert not any(equivalence_forms(q, MAPS_4) & train_forms for q in test)


def test_build_sudoku_dataset_is_cached_and_rebuilt_on_change(tmp_path):
    out = tmp_path / "s"
    sd.build_sudoku_dataset(out, size=4, num_train=4, num_test=2, num_aug=1, seed=0)
    marker = out / "train" / "marker.txt"
    marker.write_text("kept while the folder is reused")
    sd.build_sudoku_dataset(out, size=4, num_train=4, num_test=2, num_aug=1, seed=0)
    assert marker.exists()
    sd.build_sudoku_dataset(out, size=4, num_train=4, num_test=2, num_aug=2, seed=0)
    assert not marker.exists()
    record = json.loads((out / ds.BUILD_INFO_FILE).read_text())
    assert record["kind"] == "sudoku" and record["num_aug"] == 2 and (record["box_rows"], record["box_cols"]) == (2, 2)
    assert ds.load_split(out, "train").get_set().num_examples == 12


def test_reference_built_folder_loads_and_is_recognised(tmp_path):
    """A folder written the way the reference builder writes it (json.dump + np.save, total_puzzles =
    number of groups, no build record) loads unchanged and is recognised as 9x9 Sudoku."""
    questions, solutions = sd.generate_sudokus(3, 9, seed=0)
    inputs, labels = sd.augment_sudokus(questions, solutions, 2, sd.geometry(9), np.random.default_rng(0))
    split = tmp_path / "ref" / "train"
    split.mkdir(parents=True)
    arrays = dict(inputs=inputs + 1, labels=labels + 1, puzzle_identifiers=np.zeros(9, np.int32),
                  puzzle_indices=np.arange(10, dtype=np.int32), group_indices=np.array([0, 3, 6, 9], np.int32))
    for name, value in arrays.items():
        np.save(split / f"all__{name}.npy", value)
    meta = dict(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=11, seq_len=81,
                num_puzzle_identifiers=1, total_groups=3, mean_puzzle_examples=1, total_puzzles=3, sets=["all"])
    (split / "dataset.json").write_text(json.dumps(meta))
    loaded = ds.load_split(tmp_path / "ref", "train")
    np.testing.assert_array_equal(loaded.inputs, inputs + 1)
    assert sd.sudoku_geometry_of(tmp_path / "ref", 11, 81) == sd.geometry(9)
    assert sd.sudoku_geometry_of(tmp_path / "ref", 6, 900) is None


# ---------------------------------------------------------------------------------------------
# CSV files


def write_rows(path, rows, header="source,question,answer,rating"):
    path.write_text("\n".join([header] + rows) + "\n")
    return path


def test_csv_round_trip_and_conversion(tmp_path):
    questions, solutions, ratings = sd.generate_sudokus(6, 9, seed=2, return_ratings=True)
    path = cf.write_sudoku_csv(tmp_path / "s.csv", sd.digits_to_tokens(questions), sd.digits_to_tokens(solutions))
    lines = path.read_text().splitlines()
    assert lines[0] == "source,question,answer,rating" and len(lines) == 7
    assert [int(line.split(",")[3]) for line in lines[1:]] == ratings.tolist()  # default rating = the solver's
    assert all(len(line.split(",")[1]) == 81 and "." in line.split(",")[1] for line in lines[1:])
    records = cf.read_sudoku_csv(path)
    assert len(records) == 6 and records.geometry == sd.geometry(9)
    np.testing.assert_array_equal(records.questions, questions)
    np.testing.assert_array_equal(records.labels, sd.digits_to_tokens(solutions))
    assert cf.is_sudoku_csv(path) and records.ratings == [str(r) for r in ratings]
    # '0' for blanks, a byte-order mark and a 6x6 grid read too.
    zeros = write_rows(tmp_path / "z.csv", [f"x,{CLASSIC},{CLASSIC_SOLUTION},0"])
    zeros.write_bytes(b"\xef\xbb\xbf" + zeros.read_bytes())
    np.testing.assert_array_equal(cf.read_sudoku_csv(zeros).questions[0], digits(CLASSIC))
    q6, a6 = sd.generate_sudokus(4, 6, seed=0)
    path6 = cf.write_sudoku_csv(tmp_path / "s6.csv", sd.digits_to_tokens(q6), sd.digits_to_tokens(a6), ratings=[1, 2, 3, 4])
    assert cf.read_sudoku_csv(path6).geometry == sd.geometry(6)
    folder = cf.convert_sudoku_csv(path, path, tmp_path / "folder", num_aug=2, seed=0, subsample=4)
    train = ds.load_split(folder, "train")
    assert train.get_set().num_groups == 4 and train.get_set().num_examples == 12 and train.metadata.vocab_size == 11
    assert ds.load_split(folder, "test").get_set().num_examples == 6
    assert sd.sudoku_geometry_of(folder) == sd.geometry(9)
    assert not cf.is_sudoku_csv(write_rows(tmp_path / "maze.csv", ["x,S G,SoG,1"]))


BAD_ANSWER_CELL = CLASSIC_SOLUTION[:10] + ("4" if CLASSIC_SOLUTION[10] != "4" else "5") + CLASSIC_SOLUTION[11:]
BAD_CSV_ROWS = {
    "question too short": ([f"x,{CLASSIC},{CLASSIC_SOLUTION},1", "", f"x,{CLASSIC[:80]},{CLASSIC_SOLUTION},1"], 4,
                           "field 'question'", "has 80 characters, expected 81 (9x9)"),
    "answer too long": ([f"x,{CLASSIC},{CLASSIC_SOLUTION}1,1"], 2, "field 'answer'", "82 characters, expected 81"),
    "bad character": ([f"x,{CLASSIC},{CLASSIC_SOLUTION},1", f"y,{CLASSIC[:5]}x{CLASSIC[6:]},{CLASSIC_SOLUTION},1"],
                      3, "field 'question'", "'x' at position 5 is not a digit 1-9"),
    "non-ascii character": ([f"x,{CLASSIC[:5]}é{CLASSIC[6:]},{CLASSIC_SOLUTION},1"], 2, "field 'question'", "'é'"),
    "digit too large for 6x6": (["x," + "7" + "." * 35 + ",123456" * 1 + "4" * 30 + ",1"], 2, "field 'question'",
                                "is not a digit 1-6"),
    "givens repeat in a row": ([f"x,55{CLASSIC[2:]},{CLASSIC_SOLUTION},1"], 2, "field 'question'",
                               "repeats digit 5 in row 1"),
    "givens repeat in a column": ([f"x,{CLASSIC[:27]}5{CLASSIC[28:]},{CLASSIC_SOLUTION},1"], 2, "field 'question'",
                                  "repeats digit 5 in column 1"),
    "givens repeat in a box": ([f"x,{CLASSIC[:20]}5{CLASSIC[21:]},{CLASSIC_SOLUTION},1"], 2, "field 'question'",
                               "repeats digit 5 in box 1"),
    "answer changes a given": ([f"x,{CLASSIC},{'6' + CLASSIC_SOLUTION[1:]},1"], 2, "field 'answer'",
                               "changes the given 5 at row 1 column 1 to 6"),
    "answer repeats a digit": ([f"x,{CLASSIC[:10] + '.' + CLASSIC[11:]},{BAD_ANSWER_CELL},1"], 2, "field 'answer'",
                               "is not a solved Sudoku: it repeats digit"),
    "answer leaves a blank": ([f"x,{CLASSIC},{CLASSIC_SOLUTION[:10]}.{CLASSIC_SOLUTION[11:]},1"], 2, "field 'answer'",
                              "leaves row 2 column 2 blank"),
    "missing column": ([f"x,{CLASSIC},{CLASSIC_SOLUTION}"], 2, "line 2", "expected 4 fields"),
    "not a square": (["x,12345,12345,1"], 2, "field 'question'", "has 5 cells, expected N*N"),
    "unsupported size": (["x," + "." * 25 + "," + "1" * 25 + ",1"], 2, "field 'question'", "boxes of 1x5 do not tile"),
}


@pytest.mark.parametrize("case", sorted(BAD_CSV_ROWS))
def test_bad_csv_row_gives_one_line_data_error_with_file_and_line(tmp_path, case):
    rows, line, where, expected = BAD_CSV_ROWS[case]
    path = write_rows(tmp_path / "bad.csv", rows)
    with pytest.raises(DataError) as info:
        cf.read_sudoku_csv(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path} line {line}"), message
    assert where in message and expected in message, message


def test_bad_header_empty_file_and_missing_file(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'h.csv'} line 1: expected the header")):
        cf.read_sudoku_csv(write_rows(tmp_path / "h.csv", [], header="id,puzzle,solution"))
    with pytest.raises(DataError, match="no Sudoku rows"):
        cf.read_sudoku_csv(write_rows(tmp_path / "e.csv", []))
    with pytest.raises(DataError, match="file is missing"):
        cf.read_sudoku_csv(tmp_path / "none.csv")


# ---------------------------------------------------------------------------------------------
# Pictures, tokens, shapes


def test_render_sudoku_grid_marks_and_inputs():
    text = sd.render_sudoku(CLASSIC)
    lines = text.split("\n")
    assert lines[0] == "5 3 . | . 7 . | . . ." and lines[3] == "------+-------+------" and len(lines) == 11
    tokens = sd.digits_to_tokens(digits(CLASSIC))
    assert sd.render_sudoku(tokens, 9) == text == sd.render_sudoku(digits(CLASSIC), digits=True)
    marks = np.zeros(81, bool)
    marks[1] = True
    assert sd.render_sudoku(tokens, marks=marks).split("\n")[0] == "5 3*. | . 7 . | . . ."
    six = sd.render_sudoku(np.full(36, 2, np.uint8))
    assert six.split("\n")[:3] == ["1 1 1 | 1 1 1", "1 1 1 | 1 1 1", "------+------"]
    assert sd.render_sudoku(np.zeros(16, np.uint8)).split("\n")[0] == "? ? | ? ?"  # PAD tokens
    with pytest.raises(DataError, match="tokens must lie"):
        sd.render_sudoku(np.full(81, 12, np.uint8))
    with pytest.raises(DataError, match="expected N\\*N|has 10 cells"):
        sd.render_sudoku(np.ones(10, np.uint8))


def test_geometry_and_request_checks():
    assert sd.default_box(9) == (3, 3) and sd.default_box(6) == (2, 3) and sd.default_box(8) == (2, 4)
    assert sd.geometry(6, box_rows=3) == sd.Geometry(3, 2)
    with pytest.raises(DataError, match="do not tile"):
        sd.geometry(6, 4, 2)
    with pytest.raises(DataError, match="size must be"):
        sd.geometry(10)
    with pytest.raises(DataError, match="min_rating"):
        sd.generate_sudokus(1, 6, min_rating=-1)
    with pytest.raises(DataError, match="PAD"):
        sd.tokens_to_digits(np.zeros(4, np.uint8))
    assert sd.rule_violation(digits(CLASSIC), sd.geometry(9)) is None
    assert sd.rule_violation(digits(CLASSIC), sd.geometry(9), complete=True) == "leaves row 1 column 3 blank"
