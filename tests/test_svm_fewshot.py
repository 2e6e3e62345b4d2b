"""Linear-SVM probe and N-way K-shot evaluation, against slow references and known answers."""

import numpy as np
import pytest

from pointlift.errors import PointliftConfigError
from pointlift.tasks.fewshot import fewshot_eval, sample_episode
from pointlift.tasks.svm import fit_linear_svm, svm_accuracy


def blobs(num_classes, per_class, dim, spread, seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, dim)) * 3
    labels = np.repeat(np.arange(num_classes), per_class)
    return centres[labels] + rng.normal(scale=spread, size=(len(labels), dim)), labels


def test_cv_choice_of_c_matches_a_slow_manual_loop():
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    x, y = blobs(3, 30, 8, spread=3.0, seed=1)
    Cs = (0.001, 0.1, 10.0)
    probe = fit_linear_svm(x, y, Cs=Cs, folds=3, seed=0)
    manual = {}
    for C in Cs:
        scores = []
        for train, held in StratifiedKFold(3, shuffle=True, random_state=0).split(x, y):
            scaler = StandardScaler().fit(x[train])
            svm = LinearSVC(C=C, max_iter=20000, random_state=0).fit(scaler.transform(x[train]), y[train])
            scores.append(np.mean(svm.predict(scaler.transform(x[held])) == y[held]))
        manual[C] = float(np.mean(scores))
    assert probe.cv_accuracy == pytest.approx(manual)
    best = max(manual.values())
    assert probe.C == min(c for c in Cs if manual[c] == best)


def test_svm_separates_blobs_and_never_looks_at_test_labels():
    x, y = blobs(4, 40, 6, spread=0.3, seed=2)
    tx, ty = blobs(4, 20, 6, spread=0.3, seed=2)  # same centres (same seed), fresh noise
    tx = tx + np.random.default_rng(9).normal(scale=0.3, size=tx.shape)
    accuracy, C = svm_accuracy(x, y, tx, ty, folds=4)
    assert accuracy > 0.95
    shuffled = np.random.default_rng(0).permutation(ty)
    accuracy_shuffled, C_shuffled = svm_accuracy(x, y, tx, shuffled, folds=4)
    assert C_shuffled == C  # the choice of C depends on the training split only
    assert accuracy_shuffled < 0.6


def test_bad_features_raise():
    with pytest.raises(PointliftConfigError):
        fit_linear_svm(np.ones((4, 2)), np.zeros(3))
    with pytest.raises(PointliftConfigError):
        fit_linear_svm(np.full((4, 2), np.nan), np.array([0, 0, 1, 1]))


def test_episode_sampling_respects_the_protocol():
    rng = np.random.default_rng(0)
    train_labels = np.repeat(np.arange(12), 15)
    test_labels = np.repeat(np.arange(12), 25)
    classes, support, query = sample_episode(train_labels, test_labels, 5, 10, 20, rng)
    assert len(set(classes.tolist())) == 5
    assert len(set(support.tolist())) == 50 and len(set(query.tolist())) == 100
    for c in classes:
        assert (train_labels[support] == c).sum() == 10
        assert (test_labels[query] == c).sum() == 20
    with pytest.raises(PointliftConfigError):
        sample_episode(train_labels, test_labels, 13, 10, 20, rng)


def test_fewshot_is_perfect_on_separable_features_and_chance_on_noise():
    x, y = blobs(6, 15, 10, spread=0.2, seed=3)
    tx, ty = blobs(6, 22, 10, spread=0.2, seed=3)
    result = fewshot_eval(x, y, tx, ty, n_way=5, k_shot=5, folds=10, test_per_class=20, seed=0)
    assert len(result.accuracies) == 10
    assert result.mean > 0.97 and result.std < 0.05
    rng = np.random.default_rng(4)
    noise = fewshot_eval(rng.normal(size=x.shape), y, rng.normal(size=tx.shape), ty, n_way=5, k_shot=5,
                         folds=10, test_per_class=20, seed=0)
    assert abs(noise.mean - 0.2) < 0.1  # chance level for 5 ways
