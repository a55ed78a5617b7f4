"""Pure domain-reweighting math of DDK (arXiv 2407.16154): Eq. 1, Eq. 2, the ablation mixtures, and the opt-in
epoch cap (beyond the paper).

Numpy in, numpy out; no I/O, no torch, no globals. See docs/reweighting.md for the equations and every
decision taken where the paper is silent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ddk_store.errors import ConfigError

#: Every value of ``Stage2Config.mixing``.
MIXING_MODES = ("ddk", "wo-fs", "uniform", "natural", "static")
#: How close to 1 user-given static weights must sum.
WEIGHT_SUM_TOL = 1e-6


def perplexity_ratio(ppl_student: Sequence[float], ppl_teacher: Sequence[float]) -> np.ndarray:
    """q[i] = PPL_S[i] / PPL_T[i], the per-domain gap signal of Eq. 1 and Eq. 2 (a ratio, not a difference)."""
    s = np.asarray(ppl_student, dtype=np.float64)
    t = np.asarray(ppl_teacher, dtype=np.float64)
    if s.shape != t.shape or s.ndim != 1 or s.size == 0:
        raise ValueError(f"ppl_student {s.shape} and ppl_teacher {t.shape} must be equal, non-empty 1-d shapes")
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(t)) and np.all(s > 0) and np.all(t > 0)):
        raise ValueError(f"perplexities must be finite and > 0, got student={s.tolist()} teacher={t.tolist()}")
    return s / t


def discrepancy_factor(ratio: Sequence[float]) -> np.ndarray:
    """Eq. 1: r[i] = exp(q[i]) / sum_j exp(q[j]), a softmax over domains at temperature 1.

    Args:
        ratio: q, shape (D,), the student/teacher perplexity ratios.
    Returns:
        r, shape (D,), float64, sums to 1.
    """
    q = np.asarray(ratio, dtype=np.float64)
    # Subtracting the max changes nothing mathematically (softmax is shift-invariant) but keeps exp() finite
    # for a student that is, early on, thousands of times worse than its teacher.
    e = np.exp(q - q.max())
    return e / e.sum()


def smooth_update(r_prev: Sequence[float], ratio: Sequence[float], alpha: float) -> np.ndarray:
    """Eq. 2, factor smooth updating: psi = r_t * exp(q); r_{t+1} = alpha * psi / sum(psi) + (1 - alpha) / D.

    ``r_prev`` is the previous *smoothed* factor, floor included, as Eq. 2 is written (docs/reweighting.md): no
    separate accumulator.

    Args:
        r_prev: r_t, shape (D,), a distribution.
        ratio: q at the start of interval t+1, shape (D,).
        alpha: smoothing coefficient in [0, 1]; the paper fixes 0.5.
    Returns:
        r_{t+1}, shape (D,), float64; every entry >= (1 - alpha) / D and the sum is 1.
    """
    r = np.asarray(r_prev, dtype=np.float64)
    q = np.asarray(ratio, dtype=np.float64)
    if r.shape != q.shape:
        raise ValueError(f"r_prev {r.shape} and ratio {q.shape} must have the same shape")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    # psi in log space: log r + q, shifted by its max. With r >= (1-alpha)/D > 0 the log is finite; a zero
    # entry (possible only with alpha = 1) stays exactly zero through exp(-inf) = 0.
    with np.errstate(divide="ignore"):
        log_psi = np.log(r) + q
    psi = np.exp(log_psi - log_psi.max())
    return alpha * psi / psi.sum() + (1.0 - alpha) / r.size


def uniform_weights(num_domains: int) -> np.ndarray:
    """The paper's ES ablation: 1/D for every domain."""
    return np.full(num_domains, 1.0 / num_domains)


def natural_weights(num_rows: Sequence[int]) -> np.ndarray:
    """Proportional to each domain's training rows: the pooled corpus, i.e. plain KD / CPT sampling."""
    n = np.asarray(num_rows, dtype=np.float64)
    if n.ndim != 1 or n.size == 0 or np.any(n < 0) or n.sum() <= 0:
        raise ValueError(f"num_rows must be non-negative with a positive sum, got {n.tolist()}")
    return n / n.sum()


def parse_static_weights(text: str) -> dict[str, float]:
    """Parse ``"python=0.5,wiki=0.5"`` into ``{"python": 0.5, "wiki": 0.5}``; check syntax and the sum.

    Raises:
        ConfigError: naming the offending item, a duplicate, a negative weight or a sum other than 1.
    """
    out: dict[str, float] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        try:
            if not sep or not name:
                raise ValueError
            w = float(value)
        except ValueError:
            raise ConfigError(
                f"--static-weights: cannot parse {item!r}; expected DOMAIN=WEIGHT items separated by commas, "
                f"e.g. 'python=0.6,wiki=0.4'"
            ) from None
        if name in out:
            raise ConfigError(f"--static-weights: domain {name!r} is given twice")
        if not np.isfinite(w) or w < 0:
            raise ConfigError(f"--static-weights: weight of {name!r} must be finite and >= 0, got {value!r}")
        out[name] = w
    if not out:
        raise ConfigError("--static-weights: empty; give DOMAIN=WEIGHT items, e.g. 'python=0.6,wiki=0.4'")
    total = sum(out.values())
    if abs(total - 1.0) > WEIGHT_SUM_TOL:
        raise ConfigError(f"--static-weights: weights must sum to 1, got {total:.6g} from {text!r}")
    return out


def static_weights_vector(weights: Mapping[str, float], domains: Sequence[str]) -> np.ndarray:
    """Order user weights by the store's domains; a domain missing from ``weights`` gets 0.

    Raises:
        ConfigError: a name in ``weights`` is not a domain of the store (lists the store's domains).
    """
    unknown = sorted(set(weights) - set(domains))
    if unknown:
        raise ConfigError(
            f"--static-weights: unknown domain(s) {', '.join(map(repr, unknown))}; the store has: {', '.join(domains)}"
        )
    return np.array([float(weights.get(d, 0.0)) for d in domains], dtype=np.float64)


def initial_weights(
    mixing: str,
    *,
    ratio: Sequence[float],
    num_rows: Sequence[int],
    static: np.ndarray | None = None,
    init_mixture: str = "natural",
) -> tuple[np.ndarray, np.ndarray]:
    """Interval-0 state: (factor r_0, sampling weights for D_0).

    r_0 is Eq. 1 on the initial student for ``ddk`` and ``wo-fs`` (Algorithm 1, line 1). D_0 is "randomly sampled"
    (line 2); ``init_mixture`` picks natural (default, the literal reading), uniform, or r0. The fixed mixtures
    return their weights as both values.
    """
    n = len(num_rows)
    if mixing in ("ddk", "wo-fs"):
        r0 = discrepancy_factor(ratio)
        init = {"natural": natural_weights(num_rows), "uniform": uniform_weights(n), "r0": r0}[init_mixture]
        return r0, init
    if mixing == "uniform":
        w = uniform_weights(n)
    elif mixing == "natural":
        w = natural_weights(num_rows)
    elif mixing == "static":
        if static is None:
            raise ValueError("mixing 'static' needs the static weight vector")
        w = np.asarray(static, dtype=np.float64)
    else:
        raise ValueError(f"unknown mixing {mixing!r}; expected one of {MIXING_MODES}")
    return w, w


def next_weights(mixing: str, r_prev: np.ndarray, ratio: Sequence[float], alpha: float) -> np.ndarray:
    """The factor for the next interval, which is also its sampling distribution.

    ddk: Eq. 2 from r_prev. wo-fs: Eq. 1 afresh (no history, no floor). uniform/natural/static: unchanged.
    """
    if mixing == "ddk":
        return smooth_update(r_prev, ratio, alpha)
    if mixing == "wo-fs":
        return discrepancy_factor(ratio)
    if mixing in ("uniform", "natural", "static"):
        return np.asarray(r_prev, dtype=np.float64).copy()
    raise ValueError(f"unknown mixing {mixing!r}; expected one of {MIXING_MODES}")


# ------------------------------------------------------------------------------------ data-aware cap (opt-in)
# Beyond the paper: ``--max-epochs-per-domain E`` (docs/reweighting.md, "The epoch cap"). Off by default.
def epoch_cap(max_epochs: float, *, remaining_steps: int, rows_per_step: int, num_rows: Sequence[int],
              consumed: Sequence[int]) -> np.ndarray:
    """The largest sampling weight each domain may get from now on: cap[d] = max(0, E*n[d] - c[d]) / (R*B).

    A domain sampled at its cap for all R remaining steps of B rows uses exactly the rows it has left of its
    budget of E passes over its n[d] training rows; c[d] rows of that budget are already drawn. Caps are recomputed
    at every interval from what was actually drawn, so the run as a whole stays within E passes per domain (up to
    the one-row rounding of each interval's allocation).

    Args:
        max_epochs: E > 0, passes over its training rows a domain may be sampled in the whole run.
        remaining_steps: R >= 1, optimizer steps left in the run.
        rows_per_step: B >= 1, rows per optimizer step (the global batch).
        num_rows: n, shape (D,), training rows per domain.
        consumed: c, shape (D,), rows already drawn from each domain in this run.
    Returns:
        cap, shape (D,), float64, each >= 0 (not a distribution: it sums to >= 1 when the budget allows the run).
    """
    n = np.asarray(num_rows, dtype=np.float64)
    c = np.asarray(consumed, dtype=np.float64)
    if n.shape != c.shape or n.ndim != 1 or np.any(n < 0) or np.any(c < 0):
        raise ValueError(f"num_rows {n.tolist()} and consumed {c.tolist()} must be equal-length, non-negative")
    if not max_epochs > 0 or remaining_steps < 1 or rows_per_step < 1:
        raise ValueError(f"need max_epochs > 0, remaining_steps >= 1, rows_per_step >= 1; got {max_epochs}, "
                         f"{remaining_steps}, {rows_per_step}")
    return np.maximum(0.0, max_epochs * n - c) / (remaining_steps * rows_per_step)


def cap_weights(weights: Sequence[float], cap: Sequence[float], *,
                spill: Sequence[bool] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Lower each weight above its cap to the cap and spread the excess over the uncapped domains in proportion to
    their weights; repeat until no domain exceeds its cap (spreading can push another domain over its own).

    When every uncapped domain has weight 0 (Eq. 1 underflows to exact zeros once one domain's ratio is over 745
    above the others'), the excess goes to the uncapped domains of ``spill`` (default: all) in proportion to their
    caps, each filling the same share of the rows it has left. When it has nowhere to go (the caps sum to < 1 over
    the domains that may take it), the capped weights are rescaled to sum to 1, so each such domain exceeds its cap
    by the same factor, and when every cap is 0 the weights are returned as given; the training loop refuses such a
    cap up front (:func:`check_epoch_cap`), so there this happens only through rounding.

    Args:
        weights: w, shape (D,), a distribution (the DDK factor, or any mixture).
        cap: shape (D,), from :func:`epoch_cap`.
        spill: shape (D,), the domains that may take weight they were not given (``--static-weights`` passes its
            domains of weight > 0, so a domain set to 0 stays at 0).
    Returns:
        (capped weights, shape (D,), sum 1; bool mask of the domains held at their cap).
    """
    w = np.asarray(weights, dtype=np.float64)
    cap = np.asarray(cap, dtype=np.float64)
    spill = np.ones(w.shape, dtype=bool) if spill is None else np.asarray(spill, dtype=bool)
    if (w.shape != cap.shape or w.shape != spill.shape or w.ndim != 1 or np.any(w < 0) or np.any(cap < 0)
            or abs(w.sum() - 1) > WEIGHT_SUM_TOL):
        raise ValueError(f"weights {w.tolist()} (a distribution), cap {cap.tolist()} and spill {spill.tolist()} "
                         "must be equal-length, >= 0")
    given = w
    out = w.copy()  # a cap that holds no domain changes nothing, bit for bit
    held = np.zeros(w.shape, dtype=bool)
    while True:
        over = ~held & (out > cap + 1e-12)
        if not over.any():
            return out, held
        held |= over
        out[held] = cap[held]
        free = ~held
        left, base = 1.0 - out[held].sum(), w[free].sum()
        if left > 0 and base <= 0:  # the uncapped domains have no weight: fill the room they have left
            free &= spill & (cap > 0)
            base, w = cap[free].sum(), np.where(free, cap, 0.0)
        if left <= 0 or base <= 0:  # all capped: nothing can take the excess
            held |= out > 0
            total = out.sum()
            return (out / total if total > 0 else given.copy()), held
        out[free] = w[free] * (left / base)


def apply_epoch_cap(weights: np.ndarray, max_epochs: float | None, *, remaining_steps: int, rows_per_step: int,
                    num_rows: Sequence[int], consumed: Sequence[int], spill: Sequence[bool] | None = None,
                    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The weights to sample from now on: ``weights`` itself when there is no cap (paper-exact DDK), else
    :func:`cap_weights` (``spill`` as there) under :func:`epoch_cap`. Returns (weights, cap or None, capped mask or
    None)."""
    if max_epochs is None:
        return weights, None, None
    cap = epoch_cap(max_epochs, remaining_steps=remaining_steps, rows_per_step=rows_per_step, num_rows=num_rows,
                    consumed=consumed)
    capped, held = cap_weights(weights, cap, spill=spill)
    return capped, cap, held


def min_epoch_cap(num_rows: Sequence[int], *, steps: int, rows_per_step: int) -> float:
    """The smallest --max-epochs-per-domain a run of ``steps`` x ``rows_per_step`` rows over domains of ``num_rows``
    training rows can keep, rounded up to a thousandth: its rows spread over the domains in proportion to their size."""
    total = sum(int(n) for n in num_rows)
    return float(np.ceil(1000 * steps * rows_per_step / max(total, 1)) / 1000)


def check_epoch_cap(max_epochs: float | None, num_rows: Sequence[int], *, steps: int, rows_per_step: int,
                    sampled: Sequence[bool] | None = None, why: str = "") -> None:
    """Refuse a cap the run cannot keep: E passes over the training rows of the domains it samples (``sampled``;
    default all) must hold the steps * B rows it draws. ``why`` names what leaves the others out (a flag).

    Raises:
        ConfigError: naming both row counts and the two ways out.
    """
    if max_epochs is None:
        return
    rows = [int(n) for i, n in enumerate(num_rows) if sampled is None or sampled[i]]
    total = sum(rows)
    allowed, drawn = max_epochs * total, steps * rows_per_step
    if allowed < drawn * (1 - 1e-9):  # (E x total in floating point: 1.16 x 25 = 28.999999999999996)
        over = f" of the domains {why} samples" if why and len(rows) < len(num_rows) else ""
        raise ConfigError(
            f"--max-epochs-per-domain {max_epochs:g} allows at most {max_epochs:g} x {total} = {allowed:g} "
            f"training rows{over}, but the run draws --steps {steps} x --batch-size {rows_per_step} = {drawn}; raise "
            f"--max-epochs-per-domain to at least {min_epoch_cap(rows, steps=steps, rows_per_step=rows_per_step):g} "
            f"or lower --steps"
        )
