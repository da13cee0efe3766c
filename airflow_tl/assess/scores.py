"""Transferability scores, LogME and LEEP, and the baselines that say what a sample without information scores.

Both rate a pretrained model on a labelled target sample without training it:

- LogME (You, Liu, Wang, Long, ICML 2021, "LogME: Practical Assessment of Pre-trained Models for Transfer
  Learning") from the frozen features;
- LEEP (Nguyen, Hassner, Seeger, Archambeau, ICML 2020, "LEEP: A New Measure to Evaluate Transferability of
  Learned Representations") from the source model's own class probabilities.

Inputs are numpy arrays or torch tensors on any device. Everything is computed in float64 on the CPU, so a
score does not depend on the worker or on the dtype the features were stored in.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from airflow_tl.exceptions import InvalidArgumentError

log = logging.getLogger(__name__)

MIN_PER_CLASS = 2
# The fixed point usually settles in tens of steps; the slow cases are ratios drifting towards a bound by a few
# percent per step. 5,000 steps, every class at once, cost under a second at D = 512 with 10 classes.
MAX_ITERATIONS = 5_000
# On |log t_new - log t|: the evidence is flat at its maximum, so the score is then exact to well below 1e-9.
TOLERANCE = 1e-8
# The ratio alpha/beta is kept within this factor of the largest squared singular value either side. Beyond it
# the features are ignored (upper) or fit the targets exactly (lower), and the evidence no longer moves.
RATIO_RANGE = 1e12
# Eigenvalues of F'F in float64 are accurate to about 1e-16 of the largest; well above that, they are exact enough.
SPECTRUM_FLOOR = 1e-10
# Loose enough for a softmax computed in half precision, tight enough to catch logits passed by mistake.
ROW_SUM_TOLERANCE = 1e-2
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@dataclass(frozen=True)
class ClassEvidence:
    """LogME's fit for one class's one-vs-rest target: the maximised evidence and where it was found."""

    evidence: float
    alpha: float
    beta: float
    iterations: int
    converged: bool


@dataclass(frozen=True)
class LogMEFit:
    """LogME's score, the mean of the per-class evidences, with the fit of every class."""

    score: float
    classes: tuple[ClassEvidence, ...]


def logme(features: Any, labels: Any, num_classes: int | None = None) -> float:
    """LogME of frozen features for a labelled target: the higher, the better a linear head will fit.

    :param features: (N, D) features of the target sample.
    :param labels: (N,) integer class indices.
    :param num_classes: number of target classes; the largest label + 1 when not given.
    """
    return logme_fit(features, labels, num_classes).score


def logme_fit(features: Any, labels: Any, num_classes: int | None = None) -> LogMEFit:
    """LogME with the evidence, alpha, beta and iteration count of every class.

    For class c the target is y = 1 where the label is c, else 0, modelled as y = F w + noise with prior
    w ~ N(0, I/alpha) and noise ~ N(0, I/beta). Its log evidence (as in the paper; Bishop 2006, eq. 3.86) is

        D/2 log alpha + N/2 log beta - N/2 log 2pi - beta/2 |y - F m|^2 - alpha/2 |m|^2 - 1/2 log det A,

    with A = alpha I + beta F'F and m = beta A^-1 F'y. It is maximised over (alpha, beta) by the paper's
    fixed point (its Algorithm 1, MacKay 1992): gamma = sum sigma_i / (sigma_i + alpha/beta),
    alpha <- gamma / |m|^2, beta <- (N - gamma) / |y - F m|^2, with sigma_i the squared singular values of F.
    The score is the mean over classes of the maximised evidence divided by N. One spectral decomposition of F
    serves every class (from F F' when N <= D, from F'F when N > D), so either shape costs O(N D min(N, D)).
    No bias column is added, as in the paper. log det A counts the D - rank eigenvalues equal to alpha, which the
    authors' later fixed-point code leaves out (github.com/thuml/LogME issue 23), inflating its N < D scores.

    The returned beta is the evidence's maximiser for the returned ratio t = alpha/beta, which is what the fixed
    point's beta equals on convergence. t stays within RATIO_RANGE of the largest sigma: at the upper end the
    features explain nothing of the class; at the lower end they fit it exactly. When they fit it exactly in
    fewer than N directions the evidence has no maximum (it grows without bound as t goes to 0), so the score
    there is large and set by RATIO_RANGE.

    :param features: (N, D) features of the target sample.
    :param labels: (N,) integer class indices.
    :param num_classes: number of target classes; the largest label + 1 when not given.
    """
    f = _matrix(features, "features")
    y, c = _class_labels(labels, num_classes, len(f), "features", "LogME")
    targets = (y[:, None] == np.arange(c)).astype(np.float64)
    sigma, x2, outside = _spectrum(f, targets)
    ratio, iterations, converged = _fixed_point(sigma, x2, outside, len(f))
    evidence, alpha, beta = _evidence(sigma, x2, outside, ratio, len(f))
    for k in np.flatnonzero(~converged):
        log.warning("LogME did not converge for class %d within %d iterations", k, MAX_ITERATIONS)
    classes = tuple(
        ClassEvidence(float(evidence[k]), float(alpha[k]), float(beta[k]), int(iterations[k]), bool(converged[k]))
        for k in range(c)
    )
    return LogMEFit(score=float(evidence.mean()), classes=classes)


def logme_baseline(labels: Any, num_classes: int | None = None) -> float:
    """LogME of a constant feature: the score of features that say nothing beyond the class frequencies.

    ``logme(F, y) - logme_baseline(y)`` is the mean over classes of the per-sample log Bayes factor of the
    features' model against an intercept-only model. It removes the part of LogME that depends only on the
    number and balance of the classes (raw LogME rises with the number of classes, because a rarer one-vs-rest
    target has less variance). Features without a constant direction can score below it while still informative.

    :param labels: (N,) integer class indices.
    :param num_classes: number of target classes; the largest label + 1 when not given.
    """
    count = len(_vector(labels, "labels"))
    return logme(np.ones((count, 1)), labels, num_classes)


def leep(source_probs: Any, labels: Any, num_classes: int | None = None) -> float:
    """LEEP of a source model for a labelled target: mean log-likelihood of the empirical predictor, always <= 0.

    With theta(x) the source model's class probabilities (Z source classes), the empirical joint is
    P(y, z) = 1/N sum over samples labelled y of theta(x)_z, the conditional P(y | z) = P(y, z) / P(z), and
    LEEP = 1/N sum_i log sum_z P(y_i | z) theta(x_i)_z, as in the paper. Rows of ``source_probs`` are
    renormalised to sum to exactly 1 after being checked. LEEP is fit on the sample it scores, so it is
    optimistic when N is not large against Z.

    :param source_probs: (N, Z) softmax outputs of the source model on the target sample.
    :param labels: (N,) integer target class indices.
    :param num_classes: number of target classes; the largest label + 1 when not given.
    """
    theta = _probabilities(source_probs)
    y, c = _class_labels(labels, num_classes, len(theta), "source_probs", "LEEP")
    joint = np.zeros((c, theta.shape[1]))
    np.add.at(joint, y, theta)
    source_mass = joint.sum(0, keepdims=True)
    # A source class with no mass on any sample has no conditional; it is multiplied by zero everywhere anyway.
    conditional = np.divide(joint, source_mass, out=np.zeros_like(joint), where=source_mass > 0)
    predicted = (theta * conditional[y]).sum(1)
    return float(np.log(predicted).mean())


def leep_baseline(labels: Any, num_classes: int | None = None) -> float:
    """LEEP of source outputs that carry no information: the mean log empirical prior, sum_y P(y) log P(y).

    It is minus the entropy of the labels' empirical distribution, which is what LEEP equals when every sample
    gets the same source probabilities.

    :param labels: (N,) integer class indices.
    :param num_classes: number of target classes; the largest label + 1 when not given.
    """
    y, c = _class_labels(labels, num_classes, len(_vector(labels, "labels")), "labels", "LEEP")
    prior = np.bincount(y, minlength=c) / len(y)
    return float((prior * np.log(prior)).sum())


def leep_relative(source_probs: Any, labels: Any, num_classes: int | None = None) -> float:
    """The share of the labels' entropy that LEEP's predictor explains: 1 - LEEP / leep_baseline, in [0, 1].

    This is McFadden's (1974) pseudo-R^2 of LEEP's empirical predictor against the class-prior predictor. It is
    0 when the source outputs are uninformative and 1 when the predictor is certain and right on every sample.
    It is never negative: LEEP's P(y | z) is one EM step, from the class prior, on the likelihood of
    predictors of the form sum_z P(y | z) theta(x)_z, and an EM step never lowers the likelihood. Dividing by
    the entropy makes targets with different numbers of classes comparable on one scale.

    :param source_probs: (N, Z) softmax outputs of the source model on the target sample.
    :param labels: (N,) integer target class indices.
    :param num_classes: number of target classes; the largest label + 1 when not given.
    """
    score = leep(source_probs, labels, num_classes)
    # Rounding can leave LEEP a hair below the baseline when the outputs carry nothing.
    return min(max(1.0 - score / leep_baseline(labels, num_classes), 0.0), 1.0)


def _spectrum(f: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, ...]:
    """F's squared singular values sigma, each target's squared coordinates x^2 on F's left singular vectors,
    and each target's squared norm outside F's column space, which no weights can reach.

    Eigendecomposing the smaller Gram matrix is several times cheaper than an SVD of F. When N > D, directions
    with sigma below SPECTRUM_FLOOR of the largest count as outside: F'F's eigenvalues are not accurate there.
    torch (MKL) decomposes: on two shared cores its eigh of 512 x 512 took 0.05 s against numpy's (OpenBLAS)
    0.15 s, with the OMP_WAIT_POLICY=PASSIVE that tasks set (airflow_tl.runtime); without it, torch's spinning
    threads can be far slower on busy cores.
    """
    n, d = f.shape
    features, ys = torch.from_numpy(f), torch.from_numpy(targets)
    if n <= d:
        sigma, u = torch.linalg.eigh(features @ features.T)
        return sigma.clamp(min=0.0).numpy(), ((u.T @ ys) ** 2).numpy(), np.zeros(targets.shape[1])
    sigma, v = torch.linalg.eigh(features.T @ features)
    keep = sigma > sigma.max() * SPECTRUM_FLOOR
    x2 = ((v[:, keep].T @ (features.T @ ys)) ** 2 / sigma[keep, None]).numpy()
    outside = np.clip((targets**2).sum(0) - x2.sum(0), 0.0, None)
    return sigma[keep].numpy(), x2, outside


def _fixed_point(sigma: np.ndarray, x2: np.ndarray, outside: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
    """Iterate the ratio t = alpha/beta of every class at once; returns (t, iterations, converged) per class."""
    scale = sigma.max(initial=0.0) or 1.0
    low, high = scale / RATIO_RANGE, scale * RATIO_RANGE
    # The paper starts from alpha = beta = 1.
    ratio = np.full(x2.shape[1], min(max(1.0, low), high))
    iterations = np.zeros(x2.shape[1], dtype=np.int64)
    converged = np.zeros(x2.shape[1], dtype=bool)
    for step in range(1, MAX_ITERATIONS + 1):
        new = np.clip(_next_ratio(sigma, x2, outside, ratio, n), low, high)
        moved = np.abs(np.log(new) - np.log(ratio))
        ratio = np.where(converged, ratio, new)
        iterations = np.where(converged, iterations, step)
        converged |= moved < TOLERANCE
        if converged.all():
            break
    return ratio, iterations, converged


def _next_ratio(sigma: np.ndarray, x2: np.ndarray, outside: np.ndarray, ratio: np.ndarray, n: int) -> np.ndarray:
    """One step of the paper's update, alpha <- gamma/|m|^2 and beta <- (N - gamma)/|y - Fm|^2, as their ratio."""
    gamma = (sigma[:, None] / (sigma[:, None] + ratio)).sum(0)
    weight_norm, residual = _norms(sigma, x2, outside, ratio)
    with np.errstate(divide="ignore", invalid="ignore"):
        new = gamma * residual / ((n - gamma) * weight_norm)
    # 0/0 only when every singular value is zero: the features hold nothing, which is the upper bound.
    return np.where(np.isnan(new), np.inf, new)


def _norms(sigma: np.ndarray, x2: np.ndarray, outside: np.ndarray, ratio: np.ndarray) -> tuple[np.ndarray, ...]:
    """|m|^2 and |y - F m|^2 per class at the ratio t, from the SVD: m's coordinates are s_i x_i / (sigma_i + t)."""
    denominator = (sigma[:, None] + ratio) ** 2
    weight_norm = (sigma[:, None] * x2 / denominator).sum(0)
    residual = (ratio**2 * x2 / denominator).sum(0) + outside
    return weight_norm, residual


def _evidence(sigma: np.ndarray, x2: np.ndarray, outside: np.ndarray, ratio: np.ndarray, n: int) -> tuple:
    """Per-sample log evidence at the ratio t and the beta that maximises it there; returns (evidence, alpha, beta).

    With t fixed, log det A - D log alpha = sum log(1 + sigma_i/t) and the two squared norms combine into
    beta * q with q = |y - Fm|^2 + t |m|^2, so the best beta is N / q.
    """
    weight_norm, residual = _norms(sigma, x2, outside, ratio)
    beta = n / (residual + ratio * weight_norm)
    log_det = np.log1p(sigma[:, None] / ratio).sum(0)
    evidence = 0.5 * np.log(beta) - log_det / (2 * n) - 0.5 - HALF_LOG_2PI
    return evidence, ratio * beta, beta


def _as_numpy(values: Any) -> np.ndarray:
    """A numpy array of an array or a torch tensor on any device, in any dtype (numpy has no bfloat16)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        return (values.double() if values.is_floating_point() else values).numpy()
    return np.asarray(values)


def _vector(values: Any, name: str) -> np.ndarray:
    """A one-dimensional array, or an error naming ``name``."""
    array = _as_numpy(values)
    if array.ndim != 1:
        raise InvalidArgumentError(f"{name} must have shape (N,); got shape {array.shape}")
    return array


def _matrix(values: Any, name: str) -> np.ndarray:
    """A finite (N, D) float64 matrix with N, D >= 1, or an error naming ``name``."""
    array = _as_numpy(values)
    if array.ndim != 2 or 0 in array.shape:
        raise InvalidArgumentError(f"{name} must have shape (N, D) with N, D >= 1; got shape {array.shape}")
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InvalidArgumentError(f"{name} must be real numbers; got dtype {array.dtype}")
    array = array.astype(np.float64)
    bad = ~np.isfinite(array)
    if bad.any():
        row = int(np.flatnonzero(bad.any(1))[0])
        raise InvalidArgumentError(
            f"{name} has {int(bad.sum())} non-finite values (NaN or inf), the first in row {row}"
        )
    return array


def _probabilities(values: Any) -> np.ndarray:
    """Validated (N, Z) class probabilities, each row scaled to sum to exactly 1."""
    theta = _matrix(values, "source_probs")
    if theta.min() < 0 or theta.max() > 1:
        raise InvalidArgumentError("source_probs must be probabilities in [0, 1]; were logits passed instead?")
    sums = theta.sum(1)
    worst = int(np.argmax(np.abs(sums - 1)))
    if abs(sums[worst] - 1) > ROW_SUM_TOLERANCE:
        raise InvalidArgumentError(f"rows of source_probs must sum to 1; row {worst} sums to {sums[worst]:.6g}")
    return theta / sums[:, None]


def _class_labels(labels: Any, num_classes: int | None, n: int, other: str, score: str) -> tuple[np.ndarray, int]:
    """Labels as int64 with the class count, checked against ``other``'s N and for 2 samples in every class."""
    array = _vector(labels, "labels")
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise InvalidArgumentError(f"labels must be integer class indices; got dtype {array.dtype}")
    if len(array) != n:
        raise InvalidArgumentError(f"{other} has {n} rows but labels has {len(array)} entries")
    if len(array) == 0:
        raise InvalidArgumentError(f"{score} needs a non-empty sample; labels is empty")
    y = array.astype(np.int64)
    if y.min() < 0:
        raise InvalidArgumentError(f"labels must be class indices >= 0; got {int(y.min())}")
    count = _class_count(num_classes, int(y.max()), score)
    sizes = np.bincount(y, minlength=count)
    small = np.flatnonzero(sizes < MIN_PER_CLASS)
    if small.size:
        listed = ", ".join(f"class {k} has {sizes[k]} sample{'' if sizes[k] == 1 else 's'}" for k in small)
        raise InvalidArgumentError(f"{score} needs at least {MIN_PER_CLASS} samples in every class: {listed}")
    return y, count


def _class_count(num_classes: int | None, largest: int, score: str) -> int:
    """The number of classes: ``num_classes`` checked against the largest label, or the largest label + 1."""
    if num_classes is None:
        num_classes = largest + 1
    elif isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
        raise InvalidArgumentError(f"num_classes must be an integer; got {num_classes!r}")
    elif largest >= num_classes:
        raise InvalidArgumentError(f"label {largest} is out of range for num_classes={num_classes}")
    if num_classes < 2:
        raise InvalidArgumentError(f"{score} needs at least 2 classes; got {num_classes}")
    return int(num_classes)
