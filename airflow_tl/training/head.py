"""A linear head fitted to convergence on cached features: L2-penalised multinomial logistic regression.

The features of a frozen backbone do not change while the head learns, so training the head is a convex
problem with a single optimum. An epoch loop (a learning rate, a number of epochs, a stopping rule) can
stop anywhere short of it: four AdamW epochs on features of a dissimilar task left a head at or below
chance. Here the head is fitted full-batch with L-BFGS until its weights are within ``TOLERANCE`` of the
optimum (relative distance), once per penalty strength on a grid, and the strength is chosen on the
validation split. ``epochs``, ``learning_rate`` and the other
knobs of the epoch loop play no part.

- Features are standardised with the training split's mean and std first: the penalty then weighs every
  dimension alike, whatever its scale, and L-BFGS sees a well-conditioned problem. The returned weight and
  bias apply to the raw features: the standardisation is folded back into them.
- Objective: mean cross-entropy + ``l2 / 2 * ||W||²`` (the bias is not penalised). ``l2 = 1 / (C * n)``
  is scikit-learn's ``LogisticRegression(C=C)`` on ``n`` training rows.
- The path runs from strong to weak penalties, each fit starting from the previous optimum (weak penalties
  need the most iterations, and start close to their optimum this way). It stops once the validation loss
  has not improved for ``PATH_PATIENCE`` grid values: weaker penalties only overfit more.
- Choice: the lowest validation log-loss. It varies smoothly with the penalty, where accuracy on a small
  validation split moves in coarse steps and ties; it also prefers calibrated probabilities, which the
  gate's ``log_loss`` and ``calibration_error`` metrics judge. Losses within ``LOSS_TIE`` of the best are
  ties, broken by validation accuracy, then by the stronger penalty.
- Without validation rows nothing can be chosen: the fit uses ``default_l2(n)``, scikit-learn's default
  strength (C = 1), and says so in the log.

Computed in float64: in float32 the line search stalls before a tight tolerance. Checkpoints are not
needed: a fit takes seconds, and a retry computes the same head again, since everything is deterministic
(zero initialisation, full batch, no sampling).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn import functional as F

from airflow_tl.exceptions import InvalidArgumentError

log = logging.getLogger(__name__)

METHOD = "lbfgs"
# Half-decade steps from a penalty that flattens every logit to one that barely constrains the weights.
DEFAULT_L2_GRID: tuple[float, ...] = tuple(10.0 ** (k / 2) for k in range(2, -13, -1))
MAX_ITER = 1000
# A fit has converged when its weights are within this relative distance of the optimum (see _residual).
TOLERANCE = 1e-3
# A gradient this small (largest entry, nats per training row) is zero for float64 purposes.
GRADIENT_FLOOR = 1e-10
CHECK_EVERY = 10  # L-BFGS iterations between convergence checks
PATH_PATIENCE = 3
LOSS_TIE = 1e-4
# A dimension whose std is this small against the largest is constant in the training split: it is only
# centred (not scaled up to unit variance, which would blow float noise up into a feature).
CONSTANT_STD = 1e-6


@dataclass
class HeadFit:
    """The fitted head and how it was chosen; ``weight`` [C, D] and ``bias`` [C] apply to raw features.

    The figures are the chosen penalty's; ``iterations`` are its fit's, warm-started from the previous
    penalty's optimum. ``candidates`` has one row per penalty fitted, strongest first.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    l2: float
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    iterations: int
    converged: bool
    seconds: float
    candidates: list[dict[str, Any]] = field(default_factory=list)
    method: str = METHOD

    def to_history(self) -> list[dict[str, Any]]:
        """One row per penalty tried, strongest first, the chosen one marked: the card's regularisation path."""
        return [row | {"chosen": row["l2"] == self.l2} for row in self.candidates]

    def to_training(self) -> dict[str, Any]:
        """What the model card's ``training`` records about the fit."""
        return {
            "method": self.method,
            "l2": self.l2,
            "selection": "lowest validation log-loss" if self.val_loss is not None else "default (no validation)",
            "iterations": self.iterations,
            "converged": self.converged,
            "candidates": [
                {k: row[k] for k in ("l2", "val_loss", "val_accuracy", "iterations")} for row in self.candidates
            ],
        }


def default_l2(n: int) -> float:
    """scikit-learn's default strength (``C=1.0``) for ``n`` training rows, in this module's units.

    :param n: number of training rows.
    """
    return 1.0 / max(n, 1)


def fit_linear_head(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor] | None,
    *,
    num_classes: int,
    seed: int = 0,
    l2_grid: Sequence[float] | None = None,
    max_iter: int = MAX_ITER,
    tolerance: float = TOLERANCE,
    class_names: Sequence[str] | None = None,
) -> HeadFit:
    """Fit a linear head on ``train`` to convergence, its L2 penalty chosen on ``val``.

    :param train: features [N, D] and integer labels [N].
    :param val: validation features and labels, or None (an empty split counts as none).
    :param num_classes: number of classes C; labels lie in ``0 … C-1``.
    :param seed: the run's seed, accepted like every other fit's; this one draws no random numbers, so the
        result does not depend on it.
    :param l2_grid: penalties to choose from (default ``DEFAULT_L2_GRID``), each > 0; without validation rows a
        single one is used as given, and several give way to ``default_l2``.
    :param max_iter: most L-BFGS iterations per penalty.
    :param tolerance: relative distance from the optimum at which a fit counts as converged (see ``_residual``).
    :param class_names: names of the classes, for error messages.
    """
    threads = torch.get_num_threads()
    # Single-threaded: OpenMP's hand-offs dominate ops this small. On the shared 2-CPU machine of
    # docs/performance.md (load ~4), two threads made the digits head take 35 s instead of 6 s, and a
    # 20,000 x 512 one 46 s instead of 25 s.
    torch.set_num_threads(1)
    try:
        return _fit(train, val, num_classes, class_names, l2_grid, max_iter, tolerance)
    finally:
        torch.set_num_threads(threads)


def _fit(train, val, num_classes, class_names, l2_grid, max_iter, tolerance) -> HeadFit:
    started = time.monotonic()
    _check_options(num_classes, class_names, l2_grid, max_iter, tolerance)
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    x, y = _checked("training", train, num_classes)
    has_val = val is not None and len(val[1]) > 0
    xv, yv = _checked("validation", val, num_classes, dim=x.shape[1]) if has_val else (None, None)
    _check_every_class_trains(y, names)
    mean, scale = _standardisation(x)
    z, zv = (x.double() - mean) / scale, (xv.double() - mean) / scale if has_val else None
    grid = _grid(l2_grid, has_val, len(y))
    log.info(
        "Fitting a %d-class linear head on %d x %d features by L-BFGS (%s)",
        num_classes, len(y), x.shape[1],
        f"{len(grid)} penalties chosen on {len(yv)} validation rows" if has_val else f"l2 {grid[0]:.3g}",
    )  # fmt: skip
    candidates, (row, weight, bias) = _path(grid, z, y, zv, yv, num_classes, max_iter, tolerance)
    raw_weight, raw_bias = _unstandardise(weight, bias, mean, scale)
    fit = HeadFit(
        weight=raw_weight,
        bias=raw_bias,
        **{k: row[k] for k in ("l2", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "iterations")},
        converged=row["converged"],
        seconds=time.monotonic() - started,
        candidates=candidates,
    )
    _log_choice(fit, has_val)
    return fit


def _path(grid, z, y, zv, yv, num_classes, max_iter, tolerance):
    """Fit each penalty in turn, warm-started; returns every row, and the best row with its weights and bias."""
    weight = torch.zeros(num_classes, z.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    candidates, best, best_at = [], None, 0
    for position, l2 in enumerate(grid):
        row, val_loss = _fit_one(weight, bias, z, y, zv, yv, l2, max_iter, tolerance)
        candidates.append(row)
        if best is None or _better((val_loss, row["val_accuracy"]), best[0]):
            best, best_at = (
                ((val_loss, row["val_accuracy"]), row, weight.detach().clone(), bias.detach().clone()),
                position,
            )
        elif position - best_at >= PATH_PATIENCE:
            log.info("Validation loss has not improved for %d weaker penalties; stopping the path", PATH_PATIENCE)
            break
    return candidates, best[1:]


def _fit_one(weight, bias, z, y, zv, yv, l2, max_iter, tolerance) -> tuple[dict[str, Any], float | None]:
    """Minimise the penalised loss from the current weights; returns its figures as a row, and the exact val loss."""
    started = time.monotonic()
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        tolerance_grad=GRADIENT_FLOOR,
        # Near float64's resolution of a loss of about 1: L-BFGS stops on this only when it can no longer move.
        tolerance_change=1e-14,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=False)
        loss = _objective(weight, bias, z, y, l2)
        loss.backward()
        return loss

    state = optimizer.state[weight]
    residual = _residual(closure, weight, bias, l2)
    # L-BFGS keeps its curvature history across step() calls: running it in slices adds only the relative
    # convergence check between them (one more evaluation per slice), which it cannot make itself.
    while residual > tolerance and state.get("n_iter", 0) < max_iter:
        done = state.get("n_iter", 0)
        optimizer.param_groups[0]["max_iter"] = min(CHECK_EVERY, max_iter - done)
        optimizer.param_groups[0]["max_eval"] = optimizer.param_groups[0]["max_iter"] * 3
        optimizer.step(closure)
        residual = _residual(closure, weight, bias, l2)
        if state.get("n_iter", 0) == done:
            break  # no step changes the loss any more: as close as float64 gets
    iterations = int(state.get("n_iter", 0))
    train_loss, train_accuracy = _scores(weight, bias, z, y)
    val_loss, val_accuracy = _scores(weight, bias, zv, yv) if zv is not None else (None, None)
    row = {
        "l2": l2,
        "train_loss": round(train_loss, 5),
        "train_accuracy": round(train_accuracy, 5),
        "val_loss": None if val_loss is None else round(val_loss, 5),
        "val_accuracy": None if val_accuracy is None else round(val_accuracy, 5),
        "iterations": iterations,
        "converged": residual <= tolerance,
        "seconds": round(time.monotonic() - started, 3),
    }
    log.info(
        "l2 %.3g: train loss %.4f acc %.3f | val loss %s acc %s | %d iterations%s",
        l2, train_loss, train_accuracy,
        "-" if val_loss is None else f"{val_loss:.4f}", "-" if val_accuracy is None else f"{val_accuracy:.3f}",
        iterations, "" if row["converged"] else f", not converged (relative gradient {residual:.1e})",
    )  # fmt: skip
    return row, val_loss


def _residual(closure, weight, bias, l2) -> float:
    """The gradient's size relative to the penalty's pull, ``||g|| / (l2 * ||W||)``; 0 once the gradient vanishes.

    The objective is ``l2``-strongly convex in the weights, so this bounds their relative distance from the
    optimum ``||W - W*|| / ||W||``: a criterion that means the same at every penalty, where an absolute
    gradient tolerance is loose for weak penalties (large optimal weights, tiny gradients long before them).
    """
    closure()
    grad = torch.cat([weight.grad.flatten(), bias.grad])
    if grad.abs().max().item() <= GRADIENT_FLOOR:
        return 0.0
    pull = l2 * weight.detach().norm().item()
    return grad.norm().item() / pull if pull > 0 else math.inf


def _objective(weight, bias, z, y, l2) -> torch.Tensor:
    return F.cross_entropy(z @ weight.T + bias, y) + 0.5 * l2 * weight.pow(2).sum()


def _scores(weight, bias, z, y) -> tuple[float, float]:
    """Mean cross-entropy (unpenalised) and accuracy."""
    with torch.no_grad():
        logits = z @ weight.T + bias
        return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).double().mean().item()


def _better(scores: tuple[float | None, float | None], best: tuple[float | None, float | None]) -> bool:
    """Lower validation loss; near-equal losses go to higher accuracy, then to the earlier (stronger) penalty.

    :param scores: (validation loss, validation accuracy) of a candidate; None without validation.
    :param best: the same of the best candidate so far.
    """
    (loss, accuracy), (best_loss, best_accuracy) = scores, best
    if loss is None:
        return False
    if abs(loss - best_loss) > LOSS_TIE:
        return loss < best_loss
    return accuracy > best_accuracy


def _grid(l2_grid: Sequence[float] | None, has_val: bool, n: int) -> list[float]:
    if not has_val:
        if l2_grid is not None and len(l2_grid) == 1:
            return [float(l2_grid[0])]
        l2 = default_l2(n)
        log.info("No validation features to choose the penalty on: using the default l2 %.3g (C=1 for %d rows)", l2, n)
        return [l2]
    return sorted({float(v) for v in (l2_grid if l2_grid is not None else DEFAULT_L2_GRID)}, reverse=True)


def _standardisation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and scale of the training features (scale 1 where a dimension is constant)."""
    x = x.double()
    mean = x.mean(0)
    std = x.std(0, correction=0) if len(x) > 1 else torch.zeros_like(mean)
    constant = std <= CONSTANT_STD * std.max().clamp_min(torch.finfo(torch.float64).tiny)
    return mean, torch.where(constant, torch.ones_like(std), std)


def _unstandardise(weight, bias, mean, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold the standardisation into the head: ``W·(x-m)/s + b`` is ``(W/s)·x + (b - (W/s)·m)``."""
    raw = weight / scale
    return raw.float().contiguous(), (bias - raw @ mean).float().contiguous()


def _log_choice(fit: HeadFit, has_val: bool) -> None:
    if has_val:
        log.info(
            "Chose l2 %.3g of %d tried (lowest validation loss): val loss %.4f acc %.3f, train acc %.3f, %.2fs",
            fit.l2, len(fit.candidates), fit.val_loss, fit.val_accuracy, fit.train_accuracy, fit.seconds,
        )  # fmt: skip
    if not fit.converged:
        log.warning(
            "The head did not converge within %d L-BFGS iterations (l2 %.3g); it is used as it is",
            fit.iterations, fit.l2,
        )  # fmt: skip


# --- checks -------------------------------------------------------------------------------------------


def _checked(split: str, pair: Any, num_classes: int, dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The split's features and labels, or a clear error saying what is wrong with them."""
    if not (isinstance(pair, tuple | list) and len(pair) == 2 and all(isinstance(t, torch.Tensor) for t in pair)):
        raise InvalidArgumentError(f"The {split} split must be a pair of tensors (features, labels); got {pair!r:.80}.")
    x, y = pair
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise InvalidArgumentError(
            f"The {split} features must be [N, D] with N labels; got features {tuple(x.shape)} "
            f"and labels {tuple(y.shape)}."
        )
    if len(y) == 0 or x.shape[1] == 0:
        raise InvalidArgumentError(f"The {split} split has no features (shape {tuple(x.shape)}): nothing to fit on.")
    if dim is not None and x.shape[1] != dim:
        raise InvalidArgumentError(
            f"The {split} features have {x.shape[1]} dimensions but the training features have {dim}."
        )
    if not x.is_floating_point() or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise InvalidArgumentError(
            f"The {split} features must be floating point and the labels integers; got {x.dtype} and {y.dtype}."
        )
    bad = ~torch.isfinite(x)
    if bad.any():
        rows = bad.any(1).nonzero().flatten()
        raise InvalidArgumentError(
            f"The {split} features hold {int(bad.sum())} non-finite values (NaN or inf) in {len(rows)} of "
            f"{len(x)} rows, the first in row {int(rows[0])}: the backbone or the stored features are broken."
        )
    outside = (y < 0) | (y >= num_classes)
    if outside.any():
        raise InvalidArgumentError(
            f"The {split} labels must lie in 0…{num_classes - 1} ({num_classes} classes); "
            f"found {sorted(set(y[outside].tolist()))[:10]}."
        )
    return x, y.long()


def _check_every_class_trains(y: torch.Tensor, names: list[str]) -> None:
    counts = torch.bincount(y, minlength=len(names))
    missing = [names[i] for i in range(len(names)) if counts[i] == 0]
    if missing:
        raise InvalidArgumentError(
            f"No training features for classes {', '.join(missing)}: a head cannot learn a class it never sees."
        )


def _check_options(num_classes, class_names, l2_grid, max_iter, tolerance) -> None:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise InvalidArgumentError(f"Argument num_classes must be an integer >= 2. Provided value: {num_classes!r}.")
    if class_names is not None and len(class_names) != num_classes:
        raise InvalidArgumentError(f"Argument class_names must name {num_classes} classes; got {list(class_names)!r}.")
    if l2_grid is not None and (
        len(l2_grid) == 0
        or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in l2_grid
        )
    ):
        raise InvalidArgumentError(
            f"Argument l2_grid must hold one or more finite numbers > 0. Provided value: {list(l2_grid)!r}."
        )
    if not isinstance(max_iter, int) or isinstance(max_iter, bool) or max_iter < 1:
        raise InvalidArgumentError(f"Argument max_iter must be a positive integer. Provided value: {max_iter!r}.")
    if not (isinstance(tolerance, int | float) and math.isfinite(tolerance) and tolerance > 0):
        raise InvalidArgumentError(f"Argument tolerance must be a number > 0. Provided value: {tolerance!r}.")
