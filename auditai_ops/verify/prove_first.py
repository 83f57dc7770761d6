"""Prove first, search later: bound every sample's box before searching it for counterexamples.

`LineVerifier.verify` searches every sample's whole box for a counterexample first (a grid of
`falsify_grid` points, then signed-gradient descent from `falsify_restarts` starts), and only
then bounds it. In pixel mode that search costs about 90 forward passes of decoder and
classifier per sample, while most samples are proved by bounds on one to four pieces, a few
passes each: on the MNIST pixel example (1,000 digits, 1 thread) the search took 63 % of a
unit test's time, the bounds 27 %.

`verify_prove_first` runs a short branch and bound with the bound methods alone on every sample
(the whole box, then halves of what is unproved, and so on, within the budget). A sample all of whose
pieces are proved is verified: the bounds are sound, so no counterexample exists and the search
could only have come back empty. Meanwhile plain forward passes at a few points of each box (its
ends and centre, then the centres of the pieces about to be split) look for counterexamples: a
point whose margin is negative falsifies its sample, confirmed as the search confirms its own
(its t, class and margin are recorded as the search records them; the search would find one too,
since its grid holds the box's ends and centre). Every other sample then goes through
`LineVerifier.verify` unchanged (search first, branch and bound from the whole box, its own
budget), so its verdict comes from the procedure that decides it today; only that procedure's
random restarts are drawn for fewer samples. The search before bounds is therefore skipped only
where it cannot change the verdict, and a sample that today would run out of pieces can only gain
(the first phase proves it or hands it on).

Budget: the first phase splits no sample past `Budget.max_pieces` pieces, and no further than
`Budget.splits` and `Budget.seconds` allow (a sample it cannot split goes to the second phase).
The second phase gets the time left and the splits less those spent on samples the first phase
decided (it starts its samples afresh, as today). Outcomes of samples proved
in the first phase: verdict verified, the minimum of their pieces' bounds, the number of pieces,
the highest-ranked method any piece needed (as `LineVerifier.verify` reports them), and no
stopping budget.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from auditai_ops.verify.engine import FALSIFIED, VERIFIED, Budget, Falsifier, LineVerifier, SampleOutcomes, _Pieces, float32_box, margin_specification, margins
from auditai_ops.verify.linear_bounds import latent_line_input, margin_lower_bounds

LEVELS: int | None = None
"""Splits per piece in the first phase; None: as many as `Budget.max_pieces` allows, as the second phase's branch and bound.
The centres of the open pieces, checked before every split, catch most falsified samples on the way (MNIST pixel example:
the whole box proves 4-18 % of the samples, halves most of the rest; head o encoder in pixel mode needs 13 pieces a sample)."""

PROBE = 32
"""Samples whose whole boxes are bounded first. If fewer than half of them are proved, the other samples start at level 1
(halves): a whole box that is not proved costs a bound and proves nothing, one that is costs one bound less than two halves."""


def verify_prove_first(
    verifier: LineVerifier,
    latents: np.ndarray,
    targets: np.ndarray,
    t_low: np.ndarray,
    t_high: np.ndarray,
    methods: Sequence[str],
    falsifier: Falsifier,
    budget: Budget,
    min_margin: float,
    refine_method: str | None = None,
    levels: int | None = LEVELS,
) -> SampleOutcomes:
    """`verifier.verify(...)` with the arguments of that method, but samples that bounds prove on pieces of up to `levels` splits are not searched."""
    started = time.perf_counter()
    count, k = len(latents), verifier.directions.shape[0]
    low, high, z_all, y_all = verifier.on_device(latents, targets, t_low, t_high)
    lower = np.full(count, np.inf)
    rank = np.full(count, -1, dtype=np.int64)
    leaves = np.zeros(count, dtype=np.int64)
    failed = np.zeros(count, dtype=bool)  # handed on to the second phase, or falsified
    scale = np.where(high > low, high - low, 1.0)
    splits_left = budget.splits if budget.splits is not None else math.inf
    spent = np.zeros(count, dtype=np.int64)  # splits per sample
    levels = math.inf if levels is None else levels
    whole = _Pieces(np.arange(count), np.tile(low, (count, 1)), np.tile(high, (count, 1)))
    found: dict[int, tuple[np.ndarray, int, float]] = {}
    corners = np.array(list(itertools.product((0.0, 1.0), repeat=k)))
    for point in [np.full(k, 0.5), *corners]:  # the centre and the corners (k = 1: the ends) of every box
        _search_points(verifier, z_all, y_all, whole.keep(~failed), point, found)
        failed[list(found)] = True
    probe = np.zeros(count, dtype=bool)
    probe[np.linspace(0, count - 1, min(PROBE, count)).astype(np.int64)] = True
    start_split = False
    if count // 2 > PROBE and levels > 0:
        tried = whole.keep(probe & ~failed)
        proved = _bound_round(verifier, z_all, y_all, tried, methods, min_margin, lower, rank, leaves)
        start_split = bool(proved.mean() < 0.5) if len(proved) else False
        pieces, level = tried.keep(~proved), np.zeros(int((~proved).sum()), dtype=np.int64)
        rest = whole.keep(~probe & ~failed)
        pieces = _Pieces(np.concatenate([pieces.owner, rest.owner]), np.concatenate([pieces.low, rest.low]), np.concatenate([pieces.high, rest.high]))
        level = np.concatenate([level, np.zeros(len(rest.owner), dtype=np.int64)])
        bound_now = np.concatenate([np.zeros(len(level) - len(rest.owner), dtype=bool), np.full(len(rest.owner), not start_split)])
    else:
        pieces, level = whole.keep(~failed), np.zeros(int((~failed).sum()), dtype=np.int64)
        bound_now = np.ones(len(level), dtype=bool)
    while len(pieces.owner) and time.perf_counter() - started <= budget.seconds:
        if bound_now.any():
            proved = np.zeros(len(level), dtype=bool)
            proved[bound_now] = _bound_round(verifier, z_all, y_all, pieces.keep(bound_now), methods, min_margin, lower, rank, leaves)
            pieces, level = pieces.keep(~proved), level[~proved]
        # Split what is open, unless that would pass the levels or the budget (those samples go to the second phase).
        open_count = np.bincount(pieces.owner, minlength=count)
        failed[pieces.owner[level >= levels]] = True
        failed |= (leaves + 2 * open_count > budget.max_pieces) & (open_count > 0)
        keep = ~failed[pieces.owner]
        pieces, level = pieces.keep(keep), level[keep]
        if not len(pieces.owner) or len(pieces.owner) > splits_left:
            break
        _search_points(verifier, z_all, y_all, pieces, np.full(k, 0.5), found)  # the centres: where the pieces split
        failed[list(found)] = True
        keep = ~failed[pieces.owner]
        pieces, level = pieces.keep(keep), level[keep]
        splits_left -= len(pieces.owner)
        np.add.at(spent, pieces.owner, 1)
        pieces, level = pieces.split(scale), np.concatenate([level, level]) + 1
        bound_now = np.ones(len(level), dtype=bool)
    failed[pieces.owner] = True
    falsified = np.zeros(count, dtype=bool)
    falsified[list(found)] = True
    rest = np.flatnonzero(failed & ~falsified)
    # The second phase starts its samples afresh: it gets the splits the first phase spent on the samples it decided.
    splits = None if budget.splits is None else int(budget.splits - spent[~failed | falsified].sum())
    second = replace(budget, seconds=max(budget.seconds - (time.perf_counter() - started), 1e-3), splits=splits)
    if len(rest) == count:
        return verifier.verify(latents, targets, t_low, t_high, methods, falsifier, second, min_margin, refine_method)
    ranks = [*methods, *([refine_method] if refine_method else [])]
    outcomes = SampleOutcomes(
        verdicts=np.where(falsified, FALSIFIED, VERIFIED).astype("<U9"),
        margin_lower_bounds=np.where(falsified, np.nan, lower),
        decided_by=np.array(["search" if falsified[i] else ranks[r] if r >= 0 else "" for i, r in enumerate(rank)], dtype="<U16"),
        pieces=np.where(falsified, 1, np.maximum(leaves, 1)),
        counterexample_t=np.full((count, k), np.nan),
        counterexample_class=np.full(count, -1, dtype=np.int64),
        counterexample_margin=np.full(count, np.nan),
        stopped_by=np.full(count, "", dtype="<U19"),
    )
    for sample, (t, predicted, margin) in found.items():
        outcomes.counterexample_t[sample], outcomes.counterexample_class[sample], outcomes.counterexample_margin[sample] = t, predicted, margin
    if not len(rest):
        return outcomes
    searched = verifier.verify(latents[rest], targets[rest], t_low, t_high, methods, falsifier, second, min_margin, refine_method)
    merged = {}
    for name in SampleOutcomes.__dataclass_fields__:
        mine, theirs = getattr(outcomes, name), getattr(searched, name)
        values = mine.astype(np.result_type(mine, theirs)) if mine.dtype != theirs.dtype else mine.copy()
        values[rest] = theirs
        merged[name] = values
    return SampleOutcomes(**merged)


def _bound_round(
    verifier: LineVerifier,
    z_all: torch.Tensor,
    y_all: torch.Tensor,
    pieces: _Pieces,
    methods: Sequence[str],
    min_margin: float,
    lower: np.ndarray,
    rank: np.ndarray,
    leaves: np.ndarray,
) -> np.ndarray:
    """Bound the pieces with the methods in turn (each on what is still unproved, as `LineVerifier.verify`); record the proved ones; which were proved."""
    bounds = np.full(len(pieces.owner), -np.inf)
    proved_by = np.full(len(pieces.owner), -1)
    for method_rank, method in enumerate(methods):
        open_now = bounds <= min_margin
        if not open_now.any():
            break
        bounds[open_now] = np.fmax(bounds[open_now], _lower_bounds(verifier, z_all, y_all, pieces.keep(open_now), method, min_margin))
        proved_by[open_now & (bounds > min_margin)] = method_rank
    proved = bounds > min_margin
    np.minimum.at(lower, pieces.owner[proved], bounds[proved])
    np.maximum.at(rank, pieces.owner[proved], proved_by[proved])
    np.add.at(leaves, pieces.owner[proved], 1)
    return proved


def _search_points(verifier: LineVerifier, z_all: torch.Tensor, y_all: torch.Tensor, pieces: _Pieces, where: np.ndarray, found: dict[int, tuple[np.ndarray, int, float]]) -> None:
    """A plain forward pass at the point low + where (high - low) of every piece (where in [0, 1]^k, the point rounded into the piece's
    float32 box as the search's points are); adds to `found` the samples it misclassifies: {sample: (t, predicted class, margin)}."""
    keep = np.array([owner not in found for owner in pieces.owner], dtype=bool)
    pieces = pieces.keep(keep)
    if not len(pieces.owner):
        return
    low32, high32 = float32_box(pieces.low, pieces.high, outward=False)
    points = np.clip((pieces.low + where * (pieces.high - pieces.low)).astype(np.float32), low32, high32)
    t = torch.from_numpy(points).to(verifier.device)
    owner = torch.from_numpy(pieces.owner).to(verifier.device)
    rows = max(1, verifier.batch_size)
    with torch.no_grad():
        logits = torch.cat([verifier.logits(t[i : i + rows], z_all[owner[i : i + rows]]) for i in range(0, len(t), rows)])
        values = margins(logits, y_all[owner])
    for row in torch.nonzero(values < 0).flatten().tolist():
        sample = int(pieces.owner[row])
        if sample not in found:
            found[sample] = (points[row].astype(np.float64), int(logits[row].argmax()), float(values[row]))


def _lower_bounds(verifier: LineVerifier, z_all: torch.Tensor, y_all: torch.Tensor, pieces: _Pieces, method: str, min_margin: float) -> np.ndarray:
    """`verifier._lower_bound`, but forward+backward without the full back-substitution where a partial one applies.

    What the first phase does not prove it splits (no search in between), and two halves cost less
    than the full back-substitution of the boxes it would prove: on the MNIST pixel example that
    step proved 6 of 40 unproved half-boxes at about 1 ms each, while a half-box costs 0.85 ms.
    """
    if method != "forward+backward":
        return verifier._lower_bound(z_all, y_all, pieces, method, min_margin)
    results = []
    for first in range(0, len(pieces.owner), verifier.batch_size):
        part = pieces.keep(np.arange(first, min(first + verifier.batch_size, len(pieces.owner))))
        z, y, low, high = verifier._rows(z_all, y_all, part, outward=True)
        spec = margin_specification(y, verifier.num_classes)
        bounds = margin_lower_bounds(verifier.line.head, latent_line_input(z, verifier.directions), spec, low, high, back_substitute=True, refine_below=min_margin, full=False)
        results.append(bounds.min(dim=1).values.detach().cpu().numpy().astype(np.float64))
    return np.concatenate(results) if results else np.zeros(0)
