"""What a pipeline call costs, in seconds: a model of the work, learned from the calls made.

One call of a worker (its images made together) takes

    seconds = overhead + per_step * steps + per_unit * units

- `overhead`: once per call, whatever its size (encoding the prompts, setting the call up,
  the safety check and saving, a model's warm caches);
- `per_step`: once per denoising step, whatever the pixels (Python, the scheduler, launching
  kernels: most of a 64x64 step on a CPU, a good part of a small one on a GPU);
- `per_unit`: per work unit (`GenerationRequest.work_units`: images x (steps + the decode's
  equivalent) x pixels / 512x512), the part that grows with the picture.

One rate per unit, as sdapi had before, cannot price a 512 px job from 64 px ones: at 64 px
the per-step cost dominates, so a rate learned there was 16x too slow for larger images.

The three terms are fitted by robust least squares on relative errors (Huber weights, so one
slow call barely moves them) over each model and task's latest calls, with a weak pull towards
a prior for the device: a direction the calls cannot tell apart (every call so far had 20 steps
at 64 px, say) keeps the prior's split instead of a wild one. A batch key keeps only a factor:
the median ratio of its own calls' times to its model's prediction, so that after one call of
a shape, the next of that shape is predicted from it. Pure: no I/O, no torch.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

#: Calls kept per key (the fit forgets older ones, so it follows a machine that changes).
OBSERVATIONS = 32
#: How many of a batch key's latest calls its factor is the median of.
SCALE_OBSERVATIONS = 8
#: Weight of the prior against the calls (each call weighs 1, in relative error squared).
PRIOR_WEIGHT = 0.01
#: Huber's threshold, in robust standard deviations of the relative errors.
HUBER_K = 1.5
#: Relative errors below this are noise: the robust spread never goes under it.
MIN_SPREAD = 0.02
ROUNDS = 4


@dataclass(frozen=True, slots=True)
class Call:
    """One call as measured: its work units, its denoising steps and its seconds."""

    units: float
    steps: float
    seconds: float


@dataclass(frozen=True, slots=True)
class Cost:
    overhead: float
    per_step: float
    per_unit: float

    def seconds(self, units: float, steps: float, calls: float = 1.0) -> float:
        """The time of `calls` calls that make `units` work units of `steps` steps each."""
        return calls * (self.overhead + self.per_step * steps) + self.per_unit * units

    def scaled(self, factor: float) -> Cost:
        return Cost(self.overhead * factor, self.per_step * factor, self.per_unit * factor)

    def terms(self) -> tuple[float, float, float]:
        return (self.overhead, self.per_step, self.per_unit)


#: Priors by device, until a deployment has measured its own calls. The CPU one is the built-in
#: tiny model on 2 cores (bench/call_sizes.py: 0.1-0.15 s a unit at 256-512 px; a real model
#: on a CPU is ~30x slower, learned from its first job); the GPU one a 1.5 GB UNet in fp16 on
#: a current card.
PRIOR_CPU = Cost(overhead=0.2, per_step=0.02, per_unit=0.14)
PRIOR_GPU = Cost(overhead=0.05, per_step=0.01, per_unit=0.03)


def prior_for(device: str) -> Cost:
    return PRIOR_CPU if device == "cpu" else PRIOR_GPU


def fit(calls: Sequence[Call], prior: Cost) -> Cost:
    """The cost terms that best explain `calls`, none negative; the prior without calls."""
    calls = [call for call in calls if call.seconds > 0]
    if not calls:
        return prior
    weights = [1.0] * len(calls)
    active = [term > 0 for term in prior.terms()]
    ratios = [1.0, 1.0, 1.0]
    for _ in range(ROUNDS):
        ratios = _solve(calls, prior, weights, active)
        errors = [_relative_error(call, prior, ratios) for call in calls]
        weights = _huber(errors)
    overhead, per_step, per_unit = (r * p for r, p in zip(ratios, prior.terms(), strict=True))
    return Cost(overhead, per_step, per_unit)


def scale(calls: Sequence[Call], model: Cost) -> float:
    """How much slower (>1) or faster a batch key's latest calls ran than `model` predicts."""
    ratios = [
        call.seconds / predicted
        for call in calls[-SCALE_OBSERVATIONS:]
        if (predicted := model.seconds(call.units, call.steps)) > 0 and call.seconds > 0
    ]
    return statistics.median(ratios) if ratios else 1.0


def _features(call: Call, prior: Cost) -> list[float]:
    """The call's terms at the prior's values, relative to its time: fitting ratios to the
    prior in relative error keeps every term on the same scale."""
    return [
        term * feature / call.seconds
        for term, feature in zip(prior.terms(), (1.0, call.steps, call.units), strict=True)
    ]


def _relative_error(call: Call, prior: Cost, ratios: Sequence[float]) -> float:
    return 1.0 - sum(r * x for r, x in zip(ratios, _features(call, prior), strict=True))


def _solve(
    calls: Sequence[Call], prior: Cost, weights: Sequence[float], active: list[bool]
) -> list[float]:
    """Weighted ridge regression of the ratios to the prior, every ratio kept >= 0 by dropping
    a term that would go negative and solving again without it."""
    active = list(active)
    while True:
        index = [k for k in range(3) if active[k]]
        if not index:
            return [0.0, 0.0, 0.0]
        matrix = [[PRIOR_WEIGHT if i == j else 0.0 for j in index] for i in index]
        vector = [PRIOR_WEIGHT] * len(index)
        for call, weight in zip(calls, weights, strict=True):
            x = _features(call, prior)
            for a, i in enumerate(index):
                vector[a] += weight * x[i]
                for b, j in enumerate(index):
                    matrix[a][b] += weight * x[i] * x[j]
        solved = _gauss(matrix, vector)
        ratios = [0.0, 0.0, 0.0]
        for value, k in zip(solved, index, strict=True):
            ratios[k] = value
        negative = [k for k in index if ratios[k] < 0]
        if not negative:
            return ratios
        active[min(negative, key=lambda k: ratios[k])] = False


def _gauss(matrix: list[list[float]], vector: list[float]) -> list[float]:
    """Solve a small symmetric positive definite system (the ridge term keeps it so)."""
    n = len(vector)
    a = [[*row, v] for row, v in zip(matrix, vector, strict=True)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(a[r][col]))
        a[col], a[pivot] = a[pivot], a[col]
        for row in range(col + 1, n):
            factor = a[row][col] / a[col][col]
            for k in range(col, n + 1):
                a[row][k] -= factor * a[col][k]
    solution = [0.0] * n
    for row in reversed(range(n)):
        rest = sum(a[row][k] * solution[k] for k in range(row + 1, n))
        solution[row] = (a[row][n] - rest) / a[row][row]
    return solution


def _huber(errors: Sequence[float]) -> list[float]:
    spread = max(1.4826 * statistics.median(abs(e) for e in errors), MIN_SPREAD)
    limit = HUBER_K * spread
    return [1.0 if abs(e) <= limit else limit / abs(e) for e in errors]
