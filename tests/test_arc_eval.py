"""The ARC evaluator: cropping, de-augmentation, voting, pass@k, submission.json and arc_results.json."""
import io
import json
import types

import numpy as np
import pytest
import torch

from trm_fast.data.errors import DataError
from trm_fast.data import arc
from trm_fast.train.arc_eval import ArcVoter, evaluate_arc_folder

SIDE = 8  # canvas side in most tests (the reference's is 30)
IDENTITY = "0123456789"


def reference_dihedral(grid, k):
    """The reference's dataset/common.py numbering, written out independently of the module."""
    return [lambda a: a, lambda a: np.rot90(a, 1), lambda a: np.rot90(a, 2), lambda a: np.rot90(a, 3),
            np.fliplr, np.flipud, lambda a: a.T, lambda a: np.fliplr(np.rot90(a, 1))][k](np.asarray(grid))


def augmented(grid, k, perm):
    """The builder's augmentation: recolour c -> perm[c], then dihedral transform k."""
    mapping = np.array([int(c) for c in perm], dtype=np.uint8)
    return np.ascontiguousarray(reference_dihedral(mapping[np.asarray(grid, dtype=np.uint8)], k))


def name(task, k=0, perm=IDENTITY):
    return f"{task}|||t{k}|||{perm}"


class Feed:
    """Collects rows (identifier, input canvas, prediction canvas, q_halt logit) for one add_batch."""

    def __init__(self, side=SIDE):
        self.side, self.rows = side, []

    def add(self, identifier, input_grid, answer_grid, q_halt=0.0):
        self.rows.append((identifier, arc.grid_to_tokens(np.asarray(input_grid, dtype=np.uint8), self.side),
                          arc.grid_to_tokens(np.asarray(answer_grid, dtype=np.uint8), self.side), q_halt))
        return self

    def into(self, voter, valid=None):
        ids, inputs, preds, q = zip(*self.rows)
        voter.add_batch(torch.tensor(ids), torch.tensor(np.stack(preds)), torch.tensor(q), torch.tensor(np.stack(inputs)),
                        valid)
        return voter


IN_A, OUT_A = [[1, 2, 0], [0, 3, 3]], [[4, 5], [6, 7], [8, 9]]
WRONG_A = [[4, 5], [6, 7], [8, 8]]
IN_B1, OUT_B1 = [[1]], [[2, 2]]
IN_B2, OUT_B2 = [[3, 3]], [[4]]


def puzzles():
    return {
        "taskA": {"train": [], "test": [{"input": IN_A, "output": OUT_A}]},
        "taskB": {"train": [{"input": [[0]], "output": [[1]]}],
                  "test": [{"input": IN_B1, "output": OUT_B1}, {"input": IN_B2, "output": OUT_B2}]},
    }


IDS = ["<blank>", name("taskA"), name("taskB"), name("taskA", 3, "0312456789"), "taskB"]


def test_dihedral_transforms_follow_the_reference_numbering_and_invert():
    grid = np.arange(6, dtype=np.uint8).reshape(2, 3)
    for k in range(8):
        assert np.array_equal(arc.dihedral(grid, k), reference_dihedral(grid, k))
        assert np.array_equal(arc.inverse_dihedral(reference_dihedral(grid, k), k), grid)
    assert len({arc.dihedral(grid, k).tobytes() + bytes(arc.dihedral(grid, k).shape) for k in range(8)}) == 8


def test_the_second_ranked_answer_counts_for_pass_at_2_but_not_pass_at_1():
    feed = Feed()
    for _ in range(3):
        feed.add(1, IN_A, WRONG_A, q_halt=5.0)
    for _ in range(2):
        feed.add(1, IN_A, OUT_A, q_halt=5.0)
    result = feed.into(ArcVoter(IDS, {"taskA": puzzles()["taskA"]})).result()
    assert result.metrics["pass@1"] == 0.0
    assert result.metrics["pass@2"] == 1.0
    assert result.metrics["pass@1000"] == 1.0
    assert result.submission["taskA"] == [{"attempt_1": WRONG_A, "attempt_2": OUT_A}]
    test = result.tasks["taskA"]["tests"][0]
    assert (test["rank_of_truth"], test["solved@1"], test["solved@2"]) == (2, False, True)
    assert [c["votes"] for c in test["candidates"]] == [3, 2]


@pytest.mark.parametrize("truth_more_confident", [True, False])
def test_ties_in_votes_are_broken_by_the_mean_sigmoid_of_q_halt(truth_more_confident):
    high, low = (2.0, -1.0) if truth_more_confident else (-1.0, 2.0)
    feed = Feed()
    feed.add(1, IN_A, WRONG_A, q_halt=low).add(1, IN_A, OUT_A, q_halt=high)
    feed.add(1, IN_A, OUT_A, q_halt=high).add(1, IN_A, WRONG_A, q_halt=low)
    result = feed.into(ArcVoter(IDS, {"taskA": puzzles()["taskA"]})).result()
    assert result.metrics["pass@1"] == (1.0 if truth_more_confident else 0.0)
    assert result.metrics["pass@2"] == 1.0
    best = result.tasks["taskA"]["tests"][0]["candidates"][0]
    assert best["correct"] is truth_more_confident
    assert best["mean_q"] == pytest.approx(1 / (1 + np.exp(-2.0)), abs=1e-6)


def test_a_task_with_two_test_inputs_scores_half_when_one_is_solved():
    feed = Feed()
    feed.add(2, IN_B1, OUT_B1).add(2, IN_B2, [[5]])  # first solved, second wrong
    result = feed.into(ArcVoter(IDS, puzzles())).result()
    assert result.tasks["taskB"]["score@1"] == 0.5
    assert result.tasks["taskA"]["score@1"] == 0.0  # no predictions at all
    assert result.metrics["pass@1"] == pytest.approx(0.25)  # mean over the two tasks
    assert result.metrics["pass@2"] == pytest.approx(0.25)
    # A test input without predictions is still in the submission, in order.
    assert result.submission["taskA"] == [{"attempt_1": [[0]], "attempt_2": [[0]]}]
    assert result.submission["taskB"] == [{"attempt_1": OUT_B1, "attempt_2": OUT_B1},
                                          {"attempt_1": [[5]], "attempt_2": [[5]]}]


def test_the_two_trivial_baselines_are_scored_per_task_like_pass_at_1(tmp_path):
    puzzles = {
        # identity solves the first test input only; the most common demonstration output ([[7]],
        # twice against once) solves the second
        "copy": {"train": [{"input": [[1]], "output": [[7]]}, {"input": [[2]], "output": [[7]]},
                           {"input": [[3]], "output": [[8]]}],
                 "test": [{"input": [[4, 4]], "output": [[4, 4]]}, {"input": [[5]], "output": [[7]]}]},
        "none": {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[3]], "output": [[4]]}]},
    }
    ids = ["<blank>", name("copy"), name("none")]
    result = ArcVoter(ids, puzzles).result()
    assert result.baselines == {"identity": pytest.approx(0.25), "most_common_output": pytest.approx(0.25)}
    result.write(tmp_path)
    written = json.loads((tmp_path / "arc_results.json").read_text())
    assert written["baseline/identity"] == pytest.approx(0.25)
    assert written["baseline/most_common_output"] == pytest.approx(0.25)


def test_predictions_on_every_dihedral_transform_and_colour_permutation_vote_for_the_original_answer():
    original_in = np.array([[1, 2, 0, 0], [0, 3, 4, 0], [5, 0, 0, 6]], dtype=np.uint8)  # no symmetry
    original_out = np.array([[7, 8], [9, 1], [0, 2], [3, 3], [4, 5]], dtype=np.uint8)
    perms = [IDENTITY, "0947185236"]
    identifiers = ["<blank>"] + [name("t1", k, perm) for perm in perms for k in range(8)]
    feed = Feed()
    for identifier, identifier_name in enumerate(identifiers[1:], 1):
        k, perm = int(identifier_name.split("|||")[1][1]), identifier_name.split("|||")[2]
        feed.add(identifier, augmented(original_in, k, perm), augmented(original_out, k, perm), q_halt=0.5)
    voter = feed.into(ArcVoter(identifiers, {"t1": {"test": [{"input": original_in.tolist(),
                                                               "output": original_out.tolist()}]}}))
    result = voter.result()
    assert (result.predictions, result.unmatched) == (16, 0)
    test = result.tasks["t1"]["tests"][0]
    assert test["distinct_answers"] == 1
    assert test["candidates"][0] == {"votes": 16, "mean_q": pytest.approx(1 / (1 + np.exp(-0.5)), abs=1e-6),
                                     "shape": [5, 2], "correct": True}
    assert result.metrics["pass@1"] == 1.0


def test_a_prediction_is_matched_by_its_de_augmented_input():
    feed = Feed()
    perm = "0312456789"
    feed.add(3, augmented(IN_A, 3, perm), augmented(OUT_A, 3, perm))  # matches taskA's test input
    feed.add(3, augmented([[1, 1]], 3, perm), augmented(OUT_A, 3, perm))  # an input taskA does not have
    feed.add(4, IN_B2, OUT_B2)  # an unaugmented name
    result = feed.into(ArcVoter(IDS, puzzles())).result()
    assert (result.predictions, result.unmatched) == (2, 1)
    assert result.tasks["taskA"]["score@1"] == 1.0
    assert result.tasks["taskB"]["tests"][1]["solved@1"] is True


def test_padding_rows_do_not_vote():
    feed = Feed()
    feed.add(1, IN_A, WRONG_A).add(1, IN_A, WRONG_A).add(0, IN_A, WRONG_A).add(1, IN_A, OUT_A)
    voter = feed.into(ArcVoter(IDS, puzzles()), valid=torch.tensor([True, False, True, True]))
    result = voter.result()
    assert result.predictions == 2  # row 1 is invalid, row 2 has the blank identifier
    assert [c["votes"] for c in result.tasks["taskA"]["tests"][0]["candidates"]] == [1, 1]


def test_crop_takes_the_largest_top_left_colour_rectangle_and_stops_at_eos():
    canvas = np.zeros((6, 6), dtype=np.int64)
    canvas[:2, :3] = [[2, 3, 4], [5, 6, 7]]
    canvas[2, :3] = 1  # EOS row
    canvas[:2, 3] = 1  # EOS column
    canvas[3:, :] = 9  # colour tokens after the EOS row
    canvas[0, 4:] = 11  # colour tokens after the EOS column
    assert arc.tokens_to_grid(canvas.reshape(-1)).tolist() == [[0, 1, 2], [3, 4, 5]]
    ragged = np.full((6, 6), 1)
    ragged[0, :5] = 2  # 1 x 5 = 5
    ragged[1, :2] = 3  # 2 x 2 = 4
    ragged[2:5, :2] = 4  # 5 x 2 = 10: largest
    assert arc.tokens_to_grid(ragged.reshape(-1)).shape == (5, 2)
    assert arc.tokens_to_grid(np.zeros(36)).shape == (0, 0)  # PAD at the top-left
    full = np.full(900, 11)  # a full 30 x 30 canvas of colour 9
    assert arc.tokens_to_grid(full).shape == (30, 30) and int(arc.tokens_to_grid(full).max()) == 9


def test_an_empty_crop_votes_but_the_submission_holds_a_grid():
    feed = Feed()
    feed.rows.append((1, arc.grid_to_tokens(np.array(IN_A, np.uint8), SIDE), np.zeros(SIDE * SIDE, np.uint8), 0.0))
    result = feed.into(ArcVoter(IDS, puzzles())).result()
    assert result.tasks["taskA"]["tests"][0]["candidates"][0]["shape"] == [0, 0]
    assert result.submission["taskA"] == [{"attempt_1": [[0]], "attempt_2": [[0]]}]


def test_submission_and_results_files(tmp_path):
    feed = Feed()
    feed.add(1, IN_A, OUT_A, 1.0).add(1, IN_A, WRONG_A).add(2, IN_B1, [[2]]).add(2, IN_B1, OUT_B1).add(2, IN_B1, OUT_B1)
    result = feed.into(ArcVoter(IDS, puzzles())).result()
    files = result.write(tmp_path / "arc")
    assert sorted(p.name for p in (tmp_path / "arc").iterdir()) == ["arc_results.json", "submission.json"]
    submission = json.loads((tmp_path / "arc" / "submission.json").read_text())
    assert set(submission) == {"taskA", "taskB"}
    for task, entries in submission.items():
        assert len(entries) == len(puzzles()[task]["test"])
        for entry in entries:
            assert set(entry) == {"attempt_1", "attempt_2"}
            for grid in entry.values():
                assert isinstance(grid, list) and all(isinstance(row, list) and row for row in grid)
                assert all(type(c) is int and 0 <= c <= 9 for row in grid for c in row)
    assert submission["taskA"][0] == {"attempt_1": OUT_A, "attempt_2": WRONG_A}
    assert submission["taskB"] == [{"attempt_1": OUT_B1, "attempt_2": [[2]]}, {"attempt_1": [[0]], "attempt_2": [[0]]}]
    results = json.loads(open(files["results"]).read())
    assert results["pass@1"] == pytest.approx((1.0 + 0.5) / 2)
    assert results["predictions"] == 5 and results["unmatched"] == 0
    b = results["tasks"]["taskB"]
    assert (b["score@1"], b["score@2"]) == (0.5, 0.5)
    assert b["tests"][0]["expected_shape"] == [1, 2]
    assert b["tests"][0]["votes"] == 3 and b["tests"][0]["solved@1"] is True
    assert [c["votes"] for c in b["tests"][0]["candidates"]] == [2, 1]
    assert b["tests"][1] == {"expected_shape": [1, 1], "votes": 0, "distinct_answers": 0, "rank_of_truth": None,
                             "solved@1": False, "solved@2": False, "candidates": []}
    # Rewriting replaces the files whole.
    ArcVoter(IDS, puzzles()).result().write(tmp_path / "arc")
    assert json.loads((tmp_path / "arc" / "arc_results.json").read_text())["predictions"] == 0
    assert sorted(p.name for p in (tmp_path / "arc").iterdir()) == ["arc_results.json", "submission.json"]


def test_votes_merged_from_ranks_equal_the_votes_of_one_voter():
    feed = Feed()
    for q, answer in [(1.0, OUT_A), (0.2, WRONG_A), (-1.0, WRONG_A), (3.0, OUT_A), (0.0, [[1]])]:
        feed.add(1, IN_A, answer, q)
    single = feed.into(ArcVoter(IDS, puzzles())).result()
    merged = ArcVoter(IDS, puzzles())
    for part in (feed.rows[:2], feed.rows[2:]):
        shard = Feed()
        shard.rows = part
        buffer = io.BytesIO()
        torch.save(shard.into(ArcVoter(IDS, puzzles())).state(), buffer)  # as gather_objects sends it
        merged.merge(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    result = merged.result()
    assert result.tasks == single.tasks and result.metrics == single.metrics and result.predictions == 5


def write_folder(tmp_path, identifiers=IDS, test_puzzles=None):
    folder = tmp_path / "arc"
    folder.mkdir(exist_ok=True)
    (folder / "identifiers.json").write_text(identifiers if isinstance(identifiers, str) else json.dumps(identifiers))
    test_puzzles = puzzles() if test_puzzles is None else test_puzzles
    (folder / "test_puzzles.json").write_text(test_puzzles if isinstance(test_puzzles, str) else json.dumps(test_puzzles))
    return folder


def one_line_error(error, filename):
    message = str(error.value)
    assert "\n" not in message and filename in message, message
    return message


@pytest.mark.parametrize("identifiers, problem", [
    ("[\"<blank>\", ", "not valid JSON"),
    (json.dumps({"1": "taskA"}), "expected a JSON list"),
])
def test_a_bad_identifiers_file_is_a_one_line_error_naming_it(tmp_path, identifiers, problem):
    with pytest.raises(DataError) as error:
        ArcVoter.from_folder(write_folder(tmp_path, identifiers=identifiers))
    assert problem in one_line_error(error, "identifiers.json")


@pytest.mark.parametrize("bad_name, problem", [
    ("taskA|||t9|||0123456789", "transform 't9'"),
    ("taskA|||t1|||1023456789", "colour map"),
    ("taskA|||t1|||0123456788", "colour map"),
    ("taskA|||t1", "expected"),
])
def test_a_malformed_identifier_name_is_a_one_line_error_naming_the_file(tmp_path, bad_name, problem):
    voter = ArcVoter.from_folder(write_folder(tmp_path, identifiers=IDS[:1] + [bad_name]))
    with pytest.raises(DataError) as error:
        Feed().add(1, IN_A, OUT_A).into(voter)
    assert problem in one_line_error(error, "identifiers.json")
    with pytest.raises(DataError) as error:  # an identifier past the list's end
        Feed().add(7, IN_A, OUT_A).into(voter)
    assert "outside" in one_line_error(error, "identifiers.json")


@pytest.mark.parametrize("test_puzzles, problem", [
    ("{\"taskA\": ", "not valid JSON"),
    (json.dumps([1, 2]), "expected a non-empty JSON object"),
    (json.dumps({"taskA": {"train": []}}), "task 'taskA' has no list of test pairs"),
    (json.dumps({"taskA": {"test": [{"input": [[1]]}]}}), "lacks \"input\" or \"output\""),
    (json.dumps({"taskA": {"test": [{"input": [[1, 2], [3]], "output": [[1]]}]}}), "test pair 0 input"),
    (json.dumps({"taskA": {"test": [{"input": [[1]], "output": [[10]]}]}}), "test pair 0 output"),
])
def test_a_bad_test_puzzles_file_is_a_one_line_error_naming_it(tmp_path, test_puzzles, problem):
    with pytest.raises(DataError) as error:
        ArcVoter.from_folder(write_folder(tmp_path, test_puzzles=test_puzzles))
    assert problem in one_line_error(error, "test_puzzles.json")


def test_a_missing_file_is_a_one_line_error_naming_it(tmp_path):
    folder = write_folder(tmp_path)
    (folder / "test_puzzles.json").unlink()
    with pytest.raises(DataError) as error:
        ArcVoter.from_folder(folder)
    assert "missing" in one_line_error(error, "test_puzzles.json")


# ----------------------------------------------------------------------------------------------
# Running a model over a test split


def write_arc_folder(tmp_path, side=SIDE):
    """A test split as the builder lays it out: taskA under identifiers 1 and 3 (one test each),
    taskB under identifier 2 (two tests)."""
    from trm_fast.data.dataset import write_split

    folder = write_folder(tmp_path)
    perm = "0312456789"
    pairs = [(1, IN_A, OUT_A), (2, IN_B1, OUT_B1), (2, IN_B2, OUT_B2),
             (3, augmented(IN_A, 3, perm), augmented(OUT_A, 3, perm))]
    inputs = np.stack([arc.grid_to_tokens(np.asarray(i, np.uint8), side) for _p, i, _o in pairs])
    labels = np.stack([arc.grid_to_tokens(np.asarray(o, np.uint8), side) for _p, _i, o in pairs])
    write_split(folder, "test", inputs, labels, puzzle_identifiers=[1, 2, 3], puzzle_indices=[0, 1, 3, 4],
                group_indices=[0, 1, 2, 3], vocab_size=12, num_puzzle_identifiers=len(IDS))
    return folder


class LabelAtLastStep(torch.nn.Module):
    """Answers the input canvas at every step but the last, where it answers the label with
    q_halt 2 (so voting on any earlier step scores 0)."""

    def __init__(self, steps=3):
        super().__init__()
        self.config = types.SimpleNamespace(halt_max_steps=steps)

    def initial_carry(self, batch):
        return 0

    def forward(self, carry, batch):
        step = carry + 1
        last = step == self.config.halt_max_steps
        tokens = batch["labels"].clamp(min=0) if last else batch["inputs"].long()
        logits = torch.nn.functional.one_hot(tokens.long(), 12).float()
        q_halt = torch.full((tokens.shape[0],), 2.0 if last else -2.0)
        return step, {"logits": logits, "q_halt_logits": q_halt, "q_continue_logits": -q_halt}


@pytest.mark.parametrize("batch_size", [3, 16])
def test_evaluate_arc_votes_with_the_last_steps_answers_and_writes_its_files(tmp_path, batch_size):
    folder = write_arc_folder(tmp_path)
    result = evaluate_arc_folder(LabelAtLastStep(), folder, torch.device("cpu"), batch_size, out_dir=tmp_path / "out")
    assert result.metrics["pass@1"] == 1.0 and result.metrics["pass@2"] == 1.0
    assert (result.predictions, result.unmatched) == (4, 0)
    assert result.tasks["taskA"]["tests"][0]["candidates"][0]["votes"] == 2  # identifiers 1 and 3
    assert result.tasks["taskA"]["tests"][0]["candidates"][0]["mean_q"] == pytest.approx(1 / (1 + np.exp(-2.0)), abs=1e-6)
    submission = json.loads((tmp_path / "out" / "submission.json").read_text())
    assert submission["taskB"] == [{"attempt_1": OUT_B1, "attempt_2": OUT_B1}, {"attempt_1": OUT_B2, "attempt_2": OUT_B2}]
    assert json.loads((tmp_path / "out" / "arc_results.json").read_text())["pass@2"] == 1.0


def test_evaluate_arc_runs_a_real_model(tmp_path):
    from trm_fast.model import TRMConfig, make_model

    folder = write_arc_folder(tmp_path, side=6)
    torch.manual_seed(0)
    config = TRMConfig(vocab_size=12, seq_len=36, hidden_size=32, num_heads=2, h_cycles=1, l_cycles=1,
                       puzzle_emb_len=1, halt_max_steps=2, num_puzzle_identifiers=len(IDS))
    model = make_model(config, "fast", "torch").eval()
    result = evaluate_arc_folder(model, folder / "test", torch.device("cpu"), 4, limit=2)
    assert result.predictions + result.unmatched == 2  # the first two examples only
    assert set(result.submission) == {"taskA", "taskB"} and 0.0 <= result.metrics["pass@2"] <= 1.0
