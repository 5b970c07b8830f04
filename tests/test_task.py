"""The task object (petl_modules/model/task.py): each kind's loss, outputs, scores, best-epoch key,
thresholds and result fields against hand-computed values; the kinds come from the registry, and
the tools that name kinds (the recipe options, the model folder, the results tool, the demo) take
them from it."""

import math
import re
from statistics import NormalDist

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from petl_modules.model import scores
from petl_modules.model.scores import DEFAULT_THRESHOLD
from petl_modules.model.task import TASKS, MultiLabel, SingleLabel, Task


class Encoder:
    """What ``Task.target`` reads of SpeechBrain's CategoricalEncoder."""

    lab2ind = {"a": 0, "b": 1, "c": 2}

    def __len__(self):
        return 3

    def encode_label_torch(self, label):
        return torch.LongTensor([self.lab2ind[label]])


# ==================================================================== scores
def test_map_is_the_mean_of_per_class_average_precision_over_classes_with_positives():
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    found = np.array([[0.9, 0.2, 0.1], [0.8, 0.7, 0.3], [0.3, 0.6, 0.2], [0.1, 0.1, 0.9]])
    # class 0: positives ranked 1st and 3rd -> AP (1 + 2/3) / 2; class 1: 1st and 2nd -> 1.0;
    # class 2 has no positive: left out.
    assert scores.mean_average_precision(targets, found) == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)


def test_thresholds_are_chosen_per_class_for_the_best_f1():
    targets = np.array([[1, 0], [1, 0], [0, 1], [0, 0]])
    found = np.array([[0.3, 0.2], [0.25, 0.8], [0.1, 0.85], [0.05, 0.1]])
    thresholds = scores.choose_thresholds(targets, found)
    assert thresholds[0] == pytest.approx(0.25)  # both positives, no negative
    assert thresholds[1] == pytest.approx(0.85)  # the positive alone
    result = scores.multilabel_scores(targets, found, thresholds)
    assert result["f1_micro"] == pytest.approx(1.0) and result["f1_macro"] == pytest.approx(1.0)
    assert scores.choose_thresholds(np.zeros((2, 1)), np.ones((2, 1))) == [DEFAULT_THRESHOLD]


def test_balanced_class_weights_are_inverse_frequencies():
    single = SingleLabel().class_weights([["a"]] * 3 + [["b"]], ["a", "b"])
    assert single.tolist() == pytest.approx([4 / (2 * 3), 4 / (2 * 1)])
    multi = MultiLabel().class_weights([["a"], ["a", "b"], ["a"], []], ["a", "b"])
    assert multi.tolist() == pytest.approx([1 / 3, 3 / 1])  # negatives / positives


# ==================================================================== which task
def test_task_kinds_are_the_registered_classes_and_others_are_refused_by_name():
    assert list(TASKS) == ["single_label", "multilabel"]
    assert isinstance(Task.of("multilabel", [0.5]), MultiLabel)
    assert Task.of_options({}) == SingleLabel()
    assert Task.of_options({"task": "multilabel"}) == MultiLabel()
    with pytest.raises(ValueError, match="'task' is 'regression', not one of single_label, multilabel"):
        Task.of("regression")


def test_the_task_of_a_result_is_the_one_whose_main_score_it_holds():
    assert Task.of_result({"test_map": 0.5}) == MultiLabel()
    assert Task.of_result({"test_map_mean": 0.5}) == MultiLabel()
    assert Task.of_result({"test_accuracy": 0.5}) == SingleLabel()
    assert Task.of_result({}) == SingleLabel()


def test_a_trained_multilabel_model_keeps_its_thresholds_and_a_single_label_one_none():
    assert MultiLabel().trained([0.25, 1]).thresholds == [0.25, 1.0]
    with pytest.raises(ValueError, match="needs its per-class thresholds"):
        MultiLabel().trained(None)
    assert SingleLabel().trained([0.3]).to_json() == {"kind": "single_label", "thresholds": None}
    with pytest.raises(ValueError, match="'thresholds' given for a single_label model"):
        SingleLabel([0.5]).check(1)
    with pytest.raises(ValueError, match="'thresholds' has 1 values for 2 class_names"):
        MultiLabel([0.5]).check(2)


# ==================================================================== single-label
def test_single_label_trains_a_cross_entropy_and_counts_hits():
    task = SingleLabel()
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    labels = torch.tensor([0, 1])
    weights = torch.tensor([1.0, 2.0, 1.0])
    expected = -(torch.log_softmax(logits, -1)[0, 0] + 2 * torch.log_softmax(logits, -1)[1, 1]) / 3
    assert float(task.loss(logits, labels, weights)) == pytest.approx(float(expected))
    assert task.train_counts(logits, labels).tolist() == [1, 2]
    assert task.train_scores(torch.tensor([1.0, 4.0])) == {"accuracy": 0.25}
    assert task.target("b", Encoder()).tolist() == [1]
    assert task.labels_of("a;b") == ["a;b"]  # one class per example, whatever its name


def test_single_label_scores_valid_and_test_passes_by_accuracy():
    task = SingleLabel()
    outputs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.5, 0.1, 0.4]])
    labels = torch.tensor([0, 1, 2])
    found, thresholds = task.valid_scores(labels, outputs)
    assert found == {"accuracy": pytest.approx(2 / 3)} and thresholds is None
    test = task.test_scores(labels, outputs)
    assert test["confusion"] == [[1, 0, 0], [0, 1, 0], [1, 0, 0]]
    assert test["f1_macro"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert task.checkpoint_meta(found) == {"valid_acc": pytest.approx(2 / 3)}
    assert task.fold_result(0.5, test) == {"valid_accuracy": 0.5, "test_accuracy": pytest.approx(2 / 3),
                                           "test_f1_macro": pytest.approx(5 / 9)}


def test_single_label_pooled_loss_is_the_cross_entropy_of_renormalised_probabilities():
    pooled = torch.tensor([[0.2, 0.6], [0.3, 0.3]])  # mean of windows' softmaxes need not sum to 1
    expected = -(np.log(0.6 / 0.8) + np.log(0.5)) / 2
    assert float(SingleLabel().pooled_loss(pooled, torch.tensor([1, 0]))) == pytest.approx(expected)


def test_single_label_answers_with_the_most_probable_class():
    task = SingleLabel()
    probabilities = torch.tensor([0.1, 0.7, 0.2])
    assert task.predicted_labels(["a", "b", "c"], probabilities) == ["b"]
    top = [{"label": "b", "score": 0.7}, {"label": "c", "score": 0.2}]
    row = task.answer({"label": "b", "score": 0.7, "labels": ["b"]}, top)
    assert row == {"label": "b", "score": 0.7, "top_k": top}
    assert task.answer_text(row) == "b\t0.7000  c 0.2000"
    assert torch.equal(task.probabilities(torch.tensor([[0.0, 0.0]])), torch.tensor([[0.5, 0.5]]))


# ==================================================================== multi-label
def test_multilabel_trains_a_binary_cross_entropy_per_class_on_multi_hot_targets():
    task = MultiLabel()
    target = task.target("c ; a", Encoder())
    assert target.tolist() == [1.0, 0.0, 1.0]
    assert task.labels_of("c ; a;;") == ["c", "a"]
    logits = torch.tensor([[1.0, -1.0, 0.5]])
    weights = torch.tensor([2.0, 1.0, 1.0])
    expected = -(2 * F.logsigmoid(torch.tensor(1.0)) + F.logsigmoid(torch.tensor(1.0))
                 + F.logsigmoid(torch.tensor(0.5))) / 3
    assert float(task.loss(logits, target[None], weights)) == pytest.approx(float(expected))
    assert task.train_counts(logits, target[None]) is None and task.train_scores(None) == {}


def test_multilabel_chooses_thresholds_on_validation_and_tests_with_the_best_epochs():
    task = MultiLabel()
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    outputs = torch.tensor([[0.3, 0.2], [0.25, 0.8], [0.1, 0.85], [0.05, 0.1]])
    found, thresholds = task.valid_scores(targets, outputs)
    assert thresholds == pytest.approx([0.25, 0.85])
    assert found == {"map": pytest.approx(1.0)}
    assert task.checkpoint_meta(found, thresholds) == {"valid_map": 1.0,
                                                       "thresholds": pytest.approx([0.25, 0.85])}
    test = task.test_scores(targets, outputs, [0.5, 0.5])  # class 0 never reaches 0.5
    # Both classes rank every positive first: ROC AUC 1, so d-prime is infinite (JSON: null).
    assert test == {"map": pytest.approx(1.0), "f1_micro": pytest.approx(2 / 5),
                    "f1_macro": pytest.approx((0 + 2 / 3) / 2), "mauc": 1.0, "d_prime": math.inf,
                    "per_class": {"ap": [1.0, 1.0], "auc": [1.0, 1.0],
                                  "f1": pytest.approx([0.0, 2 / 3]), "positives": [2, 1]}}
    result = task.fold_result(0.9, test)
    assert list(result) == ["valid_map", "test_map", "test_f1_micro", "test_f1_macro", "test_mauc",
                            "test_d_prime"]
    assert result["test_mauc"] == 1.0 and result["test_d_prime"] is None
    half = task.test_scores(targets, torch.tensor([[0.3, 0.2], [0.1, 0.8], [0.2, 0.85], [0.2, 0.9]]),
                            [0.5, 0.5])  # class 0: 2 of 4 pairs ranked right; class 1: 2 of 3
    assert half["per_class"]["auc"] == pytest.approx([0.5, 2 / 3])
    assert half["d_prime"] == pytest.approx(math.sqrt(2) * NormalDist().inv_cdf((0.5 + 2 / 3) / 2))


def test_multilabel_answers_every_class_above_its_threshold_most_probable_first():
    task = MultiLabel([0.5, 0.9, 0.1])
    probabilities = torch.tensor([0.6, 0.8, 0.7])
    assert task.predicted_labels(["a", "b", "c"], probabilities) == ["c", "a"]
    top = [{"label": "b", "score": 0.8}]
    row = task.answer({"label": "b", "score": 0.8, "labels": ["c", "a"]}, top)
    assert row == {"label": "b", "score": 0.8, "top_k": top, "labels": ["c", "a"]}
    assert task.answer_text(row) == "c;a\tb 0.8000"
    assert task.answer_text({**row, "labels": []}) == "-\tb 0.8000"


def test_multilabel_pooled_loss_is_the_binary_cross_entropy_of_the_pooled_probabilities():
    pooled = torch.tensor([[0.8, 0.25]])
    expected = -(np.log(0.8) + np.log(0.75)) / 2
    assert float(MultiLabel().pooled_loss(pooled, torch.tensor([[1.0, 0.0]]))) == pytest.approx(expected)


# ==================================================================== who asks the task
def test_tools_take_the_task_kinds_from_the_registry():
    from petl_modules import results
    from petl_modules.training.compose import ConfigError, validate_options

    assert set(results.SCORES) == {task.test_key for task in TASKS.values()}
    validate_options({"task": "multilabel"})
    with pytest.raises(ConfigError, match=re.escape("--task='regression' is not one of "
                                                    "single_label|multilabel")):
        validate_options({"task": "regression"})


# ==================================================================== a third kind
@pytest.fixture
def regression():
    """The regression task of docs/extending.md, run from the page and registered for the test."""
    from conftest import REPO
    from petl_modules.model import task as task_module

    page = (REPO / "docs" / "extending.md").read_text(encoding="utf-8")
    section = page.split("## A task kind", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace = {"register_task": task_module.register_task, "Task": Task}
    exec(compile(code, "docs/extending.md", "exec"), namespace)
    try:
        yield namespace["Regression"]
    finally:
        TASKS.pop("regression", None)


def test_a_third_task_kind_is_one_class_that_the_run_flow_takes(regression, tmp_path):
    import json

    from petl_modules.training.compose import validate_options
    from petl_modules.training.recipe import aggregate_results

    task = Task.of_options({"task": "regression"})
    assert isinstance(task, regression) and task.test_key == "test_ccc"
    validate_options({"task": "regression"})
    target = task.target("0.5;-1", None)
    assert target.tolist() == [0.5, -1.0] and task.labels_of("0.5;-1") == []
    outputs = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    targets = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    assert float(task.loss(outputs, targets)) == 0.0
    found, thresholds = task.valid_scores(targets, outputs)
    assert found == {"ccc": pytest.approx(1.0)} and thresholds is None
    assert task.checkpoint_meta(found) == {"valid_ccc": pytest.approx(1.0)}
    # CCC of y = x + 1 (x = 0, 2): covariance 1, variances 1 and 1, mean difference 1 -> 2/3
    assert task.test_scores(torch.tensor([[0.0], [2.0]]), torch.tensor([[1.0], [3.0]]))["ccc"] \
        == pytest.approx(2 / 3)
    for fold, score in ((1, 0.5), (2, 0.7)):
        folder = tmp_path / f"fold_{fold}"
        folder.mkdir()
        result = {"fold": fold, **task.fold_result(0.9, {"ccc": score, "mse": 0.1})}
        (folder / "fold_result.json").write_text(json.dumps(result))
    results = aggregate_results(tmp_path, {"dataset": "X"})
    assert results["test_ccc_mean"] == pytest.approx(0.6)
    assert results["test_ccc_std"] == pytest.approx(0.1)
    assert results["valid_ccc"] == pytest.approx(0.9) and results["test_mse"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="class_weights=balanced .* a regression task"):
        task.class_weights([], ["valence"])
