"""LogME and LEEP against independent references, hand-worked cases and the properties a score must have."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from airflow_tl.assess.scores import (
    RATIO_RANGE,
    leep,
    leep_baseline,
    leep_relative,
    logme,
    logme_baseline,
    logme_fit,
)
from airflow_tl.exceptions import InvalidArgumentError, PermanentError

LOG_2PI = math.log(2 * math.pi)


def clustered(n: int, d: int, classes: int, spread: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative features (like a CNN's after ReLU) around one random centre per class; every class present."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    rng.shuffle(labels)
    centres = rng.standard_normal((classes, d)) * spread
    return np.maximum(rng.standard_normal((n, d)) + centres[labels], 0.0), labels


def one_vs_rest(labels: np.ndarray, k: int) -> np.ndarray:
    return (labels == k).astype(np.float64)


# --- Independent references for LogME: the evidence evaluated from full matrices, never from a decomposition.


def bishop_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """Per-sample log evidence of Bayesian linear regression in the weight form (Bishop 2006, eq. 3.86)."""
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    log_det = np.linalg.slogdet(a)[1]
    value = d / 2 * math.log(alpha) + n / 2 * math.log(beta) - n / 2 * LOG_2PI
    value -= beta / 2 * np.sum((y - f @ m) ** 2) + alpha / 2 * m @ m + log_det / 2
    return value / n


def marginal_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """The same evidence as the density of y under its marginal, y ~ N(0, I/beta + F F'/alpha), per sample."""
    n = len(y)
    cov = np.eye(n) / beta + f @ f.T / alpha
    chol = np.linalg.cholesky(cov)
    z = np.linalg.solve(chol, y)
    return (-0.5 * (n * LOG_2PI + z @ z) - np.log(np.diag(chol)).sum()) / n


def thuml_each_evidence(f: np.ndarray, y: np.ndarray, max_iter: int = 200_000, tol: float = 1e-13) -> tuple:
    """The LogME authors' ICML loop (github.com/thuml/LogME, LogME.py, ``each_evidence``), ported to plain numpy.

    Two deliberate changes, so that it converges to the maximum it is after: no 1e-5 added to the squared norms,
    and a tolerance and iteration cap set by the caller instead of 0.01 and 11 steps. Returns (evidence/N, alpha,
    beta). Like the original it decomposes the D x D matrix F'F, a different route from the product's. This is
    the ICML loop, not the repository's later ``_fit_fixed_point``, whose evidence drops (D - rank)/2 log alpha
    when N < D (thuml/LogME issue 23): on 30 x 512 features that gave 56.7 for a true -0.49.
    """
    n, d = f.shape
    v, s, _ = np.linalg.svd(f.T @ f)
    projected = v.T @ (f.T @ y)
    alpha, beta, lam = 1.0, 1.0, 1.0
    for _ in range(max_iter):
        gamma = (s / (s + lam)).sum()
        m = v @ (projected * beta / (alpha + beta * s))
        alpha_de = m @ m
        alpha = gamma / alpha_de
        beta_de = np.sum((y - f @ m) ** 2)
        beta = (n - gamma) / beta_de
        new_lam = alpha / beta
        if abs(new_lam - lam) / lam < tol:
            break
        lam = new_lam
    evidence = d / 2 * math.log(alpha) + n / 2 * math.log(beta) - 0.5 * np.sum(np.log(alpha + beta * s))
    evidence -= beta / 2 * beta_de + alpha / 2 * alpha_de + n / 2 * LOG_2PI
    return evidence / n, alpha, beta


# Shapes with N > D, N = D and N < D; the last one's features are weak, so its optimum is interior too.
SHAPES = [(60, 8, 3, 0.8, 0), (20, 20, 2, 0.6, 1), (24, 60, 3, 0.2, 4)]
EXACT_FIT = (16, 40, 2, 2.0, 3)


@pytest.mark.parametrize(("n", "d", "classes", "spread", "seed"), SHAPES)
def test_logme_is_the_closed_form_evidence_at_its_alpha_and_beta(n, d, classes, spread, seed):
    f, labels = clustered(n, d, classes, spread, seed)
    fit = logme_fit(f, labels)
    for k, cls in enumerate(fit.classes):
        y = one_vs_rest(labels, k)
        assert cls.converged
        assert 1e-6 < cls.alpha / cls.beta < 1e6  # interior: both forms are well conditioned there
        assert cls.evidence == pytest.approx(bishop_evidence(f, y, cls.alpha, cls.beta), rel=1e-9, abs=1e-10)
        assert cls.evidence == pytest.approx(marginal_evidence(f, y, cls.alpha, cls.beta), rel=1e-9, abs=1e-10)
    assert fit.score == pytest.approx(np.mean([c.evidence for c in fit.classes]), abs=1e-15)


@pytest.mark.parametrize(("n", "d", "classes", "spread", "seed"), [*SHAPES, EXACT_FIT])
def test_no_alpha_beta_on_a_grid_gives_more_evidence(n, d, classes, spread, seed):
    """Six decades either side of the optimum, then one percent: nothing beats the returned evidence.

    The last case has N < D and well-separated classes: the features fit every target exactly, so the maximum
    is the limit beta -> infinity, which the returned value must reach from below the grid's best.
    """
    f, labels = clustered(n, d, classes, spread, seed)
    for k, cls in enumerate(logme_fit(f, labels).classes):
        y = one_vs_rest(labels, k)
        coarse = np.linspace(-6, 6, 25)
        fine = np.log10(np.linspace(0.99, 1.01, 5))
        for steps in (coarse, fine):
            best = max(marginal_evidence(f, y, cls.alpha * 10**i, cls.beta * 10**j) for i in steps for j in steps)
            assert best <= cls.evidence + 1e-9


def test_targets_fit_exactly_by_n_lt_d_features_score_the_noise_free_limit():
    """With beta -> infinity, y ~ N(0, F F'/alpha); its best alpha is N / y'(F F')^-1 y, in closed form."""
    n, d, classes, spread, seed = EXACT_FIT
    f, labels = clustered(n, d, classes, spread, seed)
    gram = f @ f.T
    for k, cls in enumerate(logme_fit(f, labels).classes):
        y = one_vs_rest(labels, k)
        alpha = n / (y @ np.linalg.solve(gram, y))
        limit = -0.5 * (n * LOG_2PI + np.linalg.slogdet(gram)[1] - n * math.log(alpha) + n) / n
        assert cls.converged and cls.alpha / cls.beta == pytest.approx(np.linalg.eigvalsh(gram).max() / RATIO_RANGE)
        assert cls.alpha == pytest.approx(alpha, rel=1e-6)
        assert cls.evidence == pytest.approx(limit, abs=1e-8)


@pytest.mark.parametrize(("n", "d", "classes", "spread", "seed"), SHAPES)
def test_logme_matches_the_authors_loop(n, d, classes, spread, seed):
    f, labels = clustered(n, d, classes, spread, seed)
    for k, cls in enumerate(logme_fit(f, labels).classes):
        evidence, alpha, beta = thuml_each_evidence(f, one_vs_rest(labels, k))
        assert cls.evidence == pytest.approx(evidence, abs=1e-6)
        assert (cls.alpha, cls.beta) == pytest.approx((alpha, beta), rel=1e-4)


def test_worked_case_one_constant_feature():
    """F = (1, 1, 1, 1)', classes {0, 1} twice each: each target y has F'y = 2, |y|^2 = 2.

    With one feature, sigma = |F|^2 = 4, x^2 = (F'y)^2 / sigma = 1 and r = |y|^2 - x^2 = 1 lie outside F. For a
    ratio t the marginal covariance is (I + F F'/t)/beta; with u = t / (t + sigma) its determinant is
    beta^-N / u and y'(I + F F'/t)^-1 y = r + u x^2 = q. Maximising over beta gives beta = N / q and
    log evidence = -N/2 log(2 pi q / N) - N/2 + 1/2 log u, whose maximum over u is at u = r / ((N - 1) x^2)
    = 1/3. So t = 2, q = 4/3, beta = 3, alpha = t beta = 6, and per sample:
    (-2 log(2 pi / 3) - 2 - 1/2 log 3) / 4 = -1.0069589...
    """
    fit = logme_fit(np.ones((4, 1)), np.array([0, 0, 1, 1]))
    expected = (-2 * math.log(2 * math.pi / 3) - 2 - 0.5 * math.log(3)) / 4
    assert fit.score == pytest.approx(expected, abs=1e-12)
    assert fit.score == pytest.approx(-1.0069589, abs=1e-7)
    for cls in fit.classes:
        # The iteration stops when t moves by less than 1e-8; the evidence is flat there, alpha and beta are not.
        assert (cls.alpha, cls.beta) == pytest.approx((6.0, 3.0), rel=1e-7)


def test_worked_case_feature_orthogonal_to_the_targets():
    """F = (1, -1, 1, -1)' with labels (0, 0, 1, 1): F'y = 0 for both targets, so the weights' prior wins.

    The evidence then rises towards alpha -> infinity, where y ~ N(0, I/beta) with beta = N / |y|^2 = 2:
    per sample 1/2 log 2 - 1/2 - 1/2 log 2 pi = -1/2 log pi - 1/2. alpha stops at the upper end of its range.
    """
    fit = logme_fit(np.array([[1.0], [-1.0], [1.0], [-1.0]]), np.array([0, 0, 1, 1]))
    assert fit.score == pytest.approx(-0.5 * math.log(math.pi) - 0.5, abs=1e-9)
    for cls in fit.classes:
        assert cls.converged and cls.alpha / cls.beta == pytest.approx(4.0 * RATIO_RANGE)


def expected_baseline(labels: np.ndarray) -> float:
    """LogME of a constant feature by the worked case's formula, class by class (sigma = N, x^2 = n_c^2 / N)."""
    n, total = len(labels), 0.0
    for size in np.bincount(labels):
        x2, outside = size**2 / n, size - size**2 / n
        u = min(outside / ((n - 1) * x2), 1.0)
        total += (-n / 2 * math.log(2 * math.pi * (outside + u * x2) / n) - n / 2 + 0.5 * math.log(u)) / n
    return total / len(np.bincount(labels))


@pytest.mark.parametrize("labels", [[0, 0, 1, 1], [0, 0, 0, 1, 1, 2, 2, 2, 2, 2], list(range(10)) * 7])
def test_logme_baseline_is_the_score_of_a_constant_feature(labels):
    labels = np.array(labels)
    assert logme_baseline(labels) == pytest.approx(expected_baseline(labels), abs=1e-10)
    assert logme(np.full((len(labels), 1), 3.5), labels) == pytest.approx(logme_baseline(labels), abs=1e-10)


def test_logme_baseline_separates_informative_from_useless_features():
    f, labels = clustered(300, 16, 5, 1.0)
    noise = np.maximum(np.random.default_rng(9).standard_normal((300, 16)), 0)
    assert logme(f, labels) - logme_baseline(labels) > 0.2
    assert logme(noise, labels) - logme_baseline(labels) < 0.02


def test_logme_ranks_real_structure_above_shuffled_labels():
    f, labels = clustered(400, 32, 4, 1.5)
    shuffled = np.random.default_rng(5).permutation(labels)
    assert logme(f, labels) > logme(f, shuffled) + 0.1


def test_logme_is_invariant_to_sample_order_feature_scale_and_zero_columns():
    f, labels = clustered(200, 24, 4, 0.7)
    score = logme(f, labels)
    order = np.random.default_rng(3).permutation(len(f))
    assert logme(f[order], labels[order]) == pytest.approx(score, abs=1e-10)
    assert logme(1000 * f, labels) == pytest.approx(score, abs=1e-10)
    assert logme(np.hstack([f, np.zeros((200, 50))]), labels) == pytest.approx(score, abs=1e-10)


def test_logme_takes_torch_tensors_and_any_float_dtype():
    f, labels = clustered(80, 10, 3, 1.0)
    f32 = f.astype(np.float32)
    expected = logme(f32.astype(np.float64), labels)
    assert logme(torch.from_numpy(f32), torch.from_numpy(labels)) == expected
    assert logme(f32, labels.astype(np.int32)) == expected
    bf16 = torch.from_numpy(f32).to(torch.bfloat16)
    assert logme(bf16, torch.from_numpy(labels)) == logme(bf16.double().numpy(), labels)


def test_logme_num_classes_reads_labels_or_is_checked_against_them():
    f, labels = clustered(60, 6, 3, 1.0)
    assert logme(f, labels, num_classes=3) == logme(f, labels)
    assert len(logme_fit(f, labels).classes) == 3


# --- LEEP


def test_leep_hand_computed_two_classes_two_source_classes():
    """theta rows (0.9, 0.1), (0.6, 0.4) labelled 0 and (0.2, 0.8), (0.3, 0.7) labelled 1.

    P(y, z) = 1/4 * [[1.5, 0.5], [0.5, 1.5]], P(z) = (1/2, 1/2), P(y | z) = [[0.75, 0.25], [0.25, 0.75]], so
    the empirical predictor gives the true labels 0.9*0.75 + 0.1*0.25 = 0.7, then 0.55, 0.65 and 0.6.
    """
    theta = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]])
    expected = (math.log(0.7) + math.log(0.55) + math.log(0.65) + math.log(0.6)) / 4
    assert leep(theta, np.array([0, 0, 1, 1])) == pytest.approx(expected, abs=1e-15)
    assert expected == pytest.approx(-0.4740301, abs=1e-7)


def thuml_leep(theta: np.ndarray, labels: np.ndarray) -> float:
    """The LogME authors' LEEP (github.com/thuml/LogME, LEEP.py), ported unchanged in substance."""
    n = len(theta)
    joint = np.stack([(theta / n)[labels == k].sum(0) for k in range(labels.max() + 1)])
    conditional = (joint / joint.sum(0, keepdims=True)).T
    predicted = theta @ conditional
    return float(np.mean(np.log(predicted[np.arange(n), labels])))


@pytest.mark.parametrize("seed", range(5))
def test_leep_matches_the_authors_code_and_is_at_most_zero(seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((50, 7)) * 2
    theta = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.arange(50) % 4
    assert leep(theta, labels) == pytest.approx(thuml_leep(theta, labels), abs=1e-12)
    assert leep(theta, labels) <= 0


def test_leep_of_constant_outputs_is_the_log_prior_baseline():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    theta = np.tile([0.5, 0.3, 0.2], (9, 1))
    prior = np.array([3, 2, 4]) / 9
    assert leep_baseline(labels) == pytest.approx(float((prior * np.log(prior)).sum()), abs=1e-15)
    assert leep(theta, labels) == pytest.approx(leep_baseline(labels), abs=1e-12)
    assert leep_relative(theta, labels) == pytest.approx(0.0, abs=1e-12)


def test_leep_is_higher_when_the_source_outputs_predict_the_target():
    rng = np.random.default_rng(4)
    labels = np.arange(60) % 3
    # Source class 2 - y is the target class y, blurred; the random outputs know nothing of the labels.
    informative = np.full((60, 3), 0.1)
    informative[np.arange(60), 2 - labels] = 0.8
    random = rng.dirichlet(np.ones(3), size=60)
    assert leep(informative, labels) > leep(random, labels) + 0.3
    assert leep_relative(informative, labels) > 0.3 > leep_relative(random, labels)


def test_leep_relative_is_one_for_a_certain_right_predictor_and_never_negative():
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert leep(np.eye(3)[labels], labels) == 0.0
    assert leep_relative(np.eye(3)[labels], labels) == 1.0
    rng = np.random.default_rng(0)
    for _ in range(200):
        theta = rng.dirichlet(np.ones(4) * 0.3, size=12)
        labels = rng.permutation(np.arange(12) % 3)
        assert leep(theta, labels) >= leep_baseline(labels) - 1e-12
        assert 0.0 <= leep_relative(theta, labels) <= 1.0


def test_leep_copes_with_a_source_class_that_never_gets_probability():
    theta = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert leep(theta, np.array([0, 0, 1, 1])) == pytest.approx(math.log(0.5), abs=1e-15)


def test_leep_renormalises_rows_within_tolerance():
    theta = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]])
    labels = np.array([0, 0, 1, 1])
    assert leep(theta * 1.005, labels) == pytest.approx(leep(theta, labels), abs=1e-15)
    assert leep(torch.tensor(theta, dtype=torch.float16), torch.tensor(labels)) == pytest.approx(
        leep(theta, labels), abs=1e-3
    )


# --- Errors


@pytest.mark.parametrize("score", [logme, leep])
def test_sample_count_mismatch_is_named(score):
    with pytest.raises(InvalidArgumentError, match=r"has 6 rows but labels has 5 entries"):
        score(np.full((6, 2), 0.5), np.array([0, 0, 1, 1, 1]))


SCORES_OF_LABELS = {
    "logme": lambda labels, **kwargs: logme(np.full((len(labels), 2), 0.5), labels, **kwargs),
    "leep": lambda labels, **kwargs: leep(np.full((len(labels), 2), 0.5), labels, **kwargs),
    "logme_baseline": logme_baseline,
    "leep_baseline": leep_baseline,
}


@pytest.mark.parametrize("name", SCORES_OF_LABELS)
def test_a_class_with_fewer_than_two_samples_is_named_with_its_count(name):
    score = SCORES_OF_LABELS[name]
    with pytest.raises(InvalidArgumentError, match=r"at least 2 samples in every class: class 2 has 1 sample$"):
        score(np.array([0, 0, 1, 1, 2]))
    with pytest.raises(InvalidArgumentError, match=r": class 1 has 0 samples, class 3 has 0 samples$"):
        score(np.array([0, 0, 2, 2, 2]), num_classes=4)


def test_non_finite_inputs_are_refused():
    labels = np.array([0, 0, 1, 1])
    f = np.ones((4, 3))
    f[2, 1] = np.nan
    with pytest.raises(
        InvalidArgumentError, match=r"features has 1 non-finite values \(NaN or inf\), the first in row 2"
    ):
        logme(f, labels)
    theta = np.full((4, 2), 0.5)
    theta[3, 0] = np.inf
    with pytest.raises(InvalidArgumentError, match=r"source_probs has 1 non-finite"):
        leep(theta, labels)


def test_leep_refuses_rows_that_are_not_probabilities():
    labels = np.array([0, 0, 1, 1])
    with pytest.raises(InvalidArgumentError, match=r"row 1 sums to 0.5$"):
        leep(np.array([[0.5, 0.5], [0.25, 0.25], [0.5, 0.5], [0.5, 0.5]]), labels)
    with pytest.raises(InvalidArgumentError, match=r"were logits passed instead\?"):
        leep(np.array([[2.0, -1.0], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5]]), labels)


@pytest.mark.parametrize(
    ("labels", "num_classes", "message"),
    [
        (np.array([0.0, 0.0, 1.0, 1.0]), None, r"labels must be integer class indices; got dtype float64"),
        (np.array([[0, 0, 1, 1]]), None, r"labels must have shape \(N,\); got shape \(1, 4\)"),
        (np.array([0, 0, 2, 2]), 2, r"label 2 is out of range for num_classes=2"),
        (np.array([-1, -1, 0, 0]), None, r"labels must be class indices >= 0; got -1"),
        (np.array([0, 0, 0, 0]), None, r"LogME needs at least 2 classes; got 1"),
    ],
)
def test_bad_labels_are_refused_with_the_reason(labels, num_classes, message):
    with pytest.raises(InvalidArgumentError, match=message):
        logme(np.ones((4, 2)), labels, num_classes)


def test_bad_feature_shapes_are_refused_and_errors_do_not_retry():
    with pytest.raises(InvalidArgumentError, match=r"features must have shape \(N, D\)") as caught:
        logme(np.ones(4), np.array([0, 0, 1, 1]))
    assert isinstance(caught.value, PermanentError)
