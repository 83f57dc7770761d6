"""Compiled CPU kernels for the commonest verification problem: a two-hidden-layer ReLU MLP along one direction.

The network is Linear W1 -> ReLU -> Linear W2 -> ReLU -> Linear W3 (the heads `auditai` trains),
its input moves along one direction, x(s) = x0 + d0 s for s in [-1, 1] (k = 1, an exact input:
latent mode), and the margins C f are bounded by forward+backward linear bounds
(`linear_bounds.margin_lower_bounds(..., back_substitute=True)`). The bounds are the general
path's, by the same formulas (`linear_bounds`, "Relaxations" and "Back-substitution"); only the
work between the matrix products is fused, per box, into compiled loops (numba) that keep it in
cache. On the 16-256-256-10 head with a batch of 4096, that work was about 75 % of the general
path's time: dozens of memory-bound passes over [4096, 2, 256] tensors.

Per box:

1. `_first_layer`: x1(s) = c + r s = W1 x(s) + b1, exact. The first ReLU's lines over
   [c - |r|, c + |r|]: lower slope 1 if c > 0 else 0; upper the chord lam (x - c + |r|),
   lam = (c + |r|) / (2 |r|), at the unstable neurons |c| < |r|; elsewhere both lines are the
   exact linear piece. Kept as their midpoint m(s) (dense rows) and half gap g(s) (at the
   unstable neurons only, a list per box, in the order of their kinks s = -c / r).
2. W2 m + b2: the one dense matrix product (torch).
3. `_second_layer`: x2(s) lies between W2 m + b2 -/+ |W2| g (|W2| g: a sum over the unstable
   columns only). Its interval [low, high] gives the second ReLU's lines (as
   `linear_bounds._relu_lines`: chord above, slope 1 if high + low > 0 else 0 below) and the rows
   after it, which the margins' folded weights map to forward margin bounds:
   (C W3)+ lower + (C W3)- upper + C b3, concretised over s (as `linear_bounds._spec_layer`).
4. `_kink_minima` (back-substitution of chosen margin rows a = (C W3)_j): a h2 >= a' x2 + const
   with a' = a s_lo + a- (s_up - s_lo) (lower line where a > 0, upper where a < 0), and
   a' x2(s) = a' (W2 m(s) + b2) + (a' W2) (h1(s) - m(s)) with h1 = relu(x1) exact: the first term is
   linear in s (from step 2), the second non-zero only at the unstable neurons, each a hinge with
   its kink at s = -c / r. That piecewise-linear function is minimised exactly over its kinks and
   the ends, in float64, and lowered by a bound on the summation's rounding (as
   `linear_bounds._Kinks`); a' W2 is needed at the unstable columns only.

Rounding: matrix products (torch's, and the dot products here, which may reassociate like BLAS)
are rounded in float32 without directed rounding, as on the general path; prove with a small
positive margin, as the verifier does. Threads: see `two_layer_margin_bounds`. Compilation:
numba compiles the kernels on first use (a few seconds) and caches the machine code next to
this file, or in numba's user-wide cache directory (NUMBA_CACHE_DIR); where neither is
writable, each process compiles them again.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from numba import njit
from torch import nn

BackSubstitute = Callable[[torch.Tensor | None, torch.Tensor], torch.Tensor]
"""(boxes [G] or None for all, rows [G, r]) -> lower bounds [G, r] of those margin rows by back-substitution."""


def applies(flat: Sequence[tuple[str, nn.Module]], rows: torch.Tensor, interval: bool) -> bool:
    """Whether the kernels take this problem: exactly Linear, ReLU, Linear, ReLU, Linear; an exact input of
    rows [N, 2, features] (k = 1); everything float32 on the CPU; no interval track."""
    if interval or [type(module) for _, module in flat] != [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]:
        return False
    tensors = [rows] + [p for _, module in flat if isinstance(module, nn.Linear) for p in (module.weight, module.bias) if p is not None]
    return rows.dim() == 3 and rows.shape[1] == 2 and all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors)


def _kernel(function: Callable[..., object]) -> Callable[..., object]:
    """A compiled kernel that releases the GIL, its machine code cached on disk where numba finds a writable place."""
    try:
        return njit(nogil=True, cache=True)(function)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return njit(nogil=True)(function)


_ZERO, _HALF, _ONE, _TWO = np.float32(0.0), np.float32(0.5), np.float32(1.0), np.float32(2.0)
"""float32 constants: a float64 literal would turn the kernels' float32 arithmetic into float64 (and stop vectorisation)."""

_UNSTABLE_FIELDS = 6
"""Per unstable first-layer neuron: c, r, the lines' half gap (slope, centre) and midpoint (slope, centre)."""


@njit(nogil=True)
def _kink(c, r):  # type: ignore[no-untyped-def]
    """Where relu(c + r s) bends, s = -c / r (r != 0), clamped to [-1, 1]; in float64, the same wherever it is used."""
    return min(max(-np.float64(c) / np.float64(r), -1.0), 1.0)


@_kernel
def _first_layer(rows, weight_t, bias, start, stop, middle, index, count, unstable):  # type: ignore[no-untyped-def]
    """Boxes start..stop: x1(s) = c + r s = W1 x(s) + b1 for the input rows [N, 2, F0] (slope, centre), weight_t = W1^T;
    the first ReLU's lines' midpoint rows middle [N, 2, F1] (slope, centre); its unstable neurons, in the order
    of their kinks: positions index [N, F1], number count [N], and `_UNSTABLE_FIELDS` values each, unstable [N, F1, 6]."""
    hidden = weight_t.shape[1]
    c = np.empty(hidden, np.float32)
    r = np.empty(hidden, np.float32)
    keys = np.empty(hidden)
    for b in range(start, stop):
        c[:] = bias
        r[:] = _ZERO
        for j in range(weight_t.shape[0]):
            column, x_slope, x_centre = weight_t[j], rows[b, 0, j], rows[b, 1, j]
            for i in range(hidden):
                c[i] += x_centre * column[i]
                r[i] += x_slope * column[i]
        mid_slope, mid_centre = middle[b, 0], middle[b, 1]
        for i in range(hidden):  # the lower line, slope 1 if c > 0 else 0: exact where stable
            on = np.float32(c[i] > _ZERO)
            mid_slope[i] = r[i] * on
            mid_centre[i] = c[i] * on
        found = 0
        for i in range(hidden):
            spread = abs(r[i])
            if abs(c[i]) < spread:
                lower = np.float32(c[i] > _ZERO)
                chord = (c[i] + spread) / (_TWO * spread)
                intercept = chord * (spread - c[i])
                mid_slope[i] = (lower + chord) * r[i] * _HALF
                mid_centre[i] = ((lower + chord) * c[i] + intercept) * _HALF
                # Kept in the order of their kinks (insertion): `_kink_minima` walks them so, for every row.
                key = _kink(c[i], r[i])
                slot = found
                while slot > 0 and keys[slot - 1] > key:
                    keys[slot] = keys[slot - 1]
                    index[b, slot] = index[b, slot - 1]
                    unstable[b, slot] = unstable[b, slot - 1]
                    slot -= 1
                keys[slot] = key
                index[b, slot] = i
                fields = unstable[b, slot]
                fields[0], fields[1] = c[i], r[i]
                fields[2] = (chord - lower) * r[i] * _HALF
                fields[3] = ((chord - lower) * c[i] + intercept) * _HALF
                fields[4], fields[5] = mid_slope[i], mid_centre[i]
                found += 1
        count[b] = found


@njit(nogil=True, fastmath={"reassoc", "contract"})  # compiled into the kernels that call it (and into their cache)
def _dot(x, y):  # type: ignore[no-untyped-def]
    """x . y in float32, reassociated (vectorised) like a BLAS dot product."""
    total = _ZERO
    for i in range(x.shape[0]):
        total += x[i] * y[i]
    return total


@_kernel
def _second_layer(mid, index, count, unstable, weight_abs_t, positive, negative, bias, spec_of, start, stop, forward, lines):  # type: ignore[no-untyped-def]
    """Boxes start..stop: x2 between mid -/+ |W2| gap (rows [N, 2, F2]); the second ReLU's lines over its interval
    into lines [N, 3, F2] (lower slope, upper slope, upper intercept); and the forward margin lower bounds
    forward [N, S] = min over s of positive[g] lower(s) + negative[g] upper(s) + bias[g], g = spec_of[box]
    ((C W3)+, (C W3)- [G, S, F2], C b3 [G, S])."""
    features = mid.shape[2]
    radius_slope = np.empty(features, np.float32)
    radius_centre = np.empty(features, np.float32)
    rows = np.empty((4, features), np.float32)  # after the ReLU: lower slope, lower centre, upper slope, upper centre
    for b in range(start, stop):
        radius_slope[:] = _ZERO
        radius_centre[:] = _ZERO
        for n in range(count[b]):
            column = weight_abs_t[index[b, n]]
            g_slope, g_centre = unstable[b, n, 2], unstable[b, n, 3]
            for o in range(features):
                radius_slope[o] += g_slope * column[o]
                radius_centre[o] += g_centre * column[o]
        mid_slope, mid_centre = mid[b, 0], mid[b, 1]
        s_lo, s_up, b_up = lines[b, 0], lines[b, 1], lines[b, 2]
        for o in range(features):
            low_slope = mid_slope[o] - radius_slope[o]
            low_centre = mid_centre[o] - radius_centre[o]
            up_slope = mid_slope[o] + radius_slope[o]
            up_centre = mid_centre[o] + radius_centre[o]
            low = low_centre - abs(low_slope)
            high = up_centre + abs(up_slope)
            high_pos = max(high, _ZERO)
            low_neg = min(low, _ZERO)
            width = high_pos - low_neg
            chord = high_pos / (width if width > _ZERO else _ONE)  # 0 when high <= 0
            intercept = -chord * low_neg
            slope = np.float32(high + low > _ZERO)
            rows[0, o] = low_slope * slope
            rows[1, o] = low_centre * slope
            rows[2, o] = up_slope * chord
            rows[3, o] = up_centre * chord + intercept
            s_lo[o] = slope
            s_up[o] = chord
            b_up[o] = intercept
        g = spec_of[b]
        for m in range(positive.shape[1]):
            margin_slope = _dot(positive[g, m], rows[0]) + _dot(negative[g, m], rows[2])
            margin_centre = _dot(positive[g, m], rows[1]) + _dot(negative[g, m], rows[3]) + bias[g, m]
            forward[b, m] = margin_centre - abs(margin_slope)


@njit(nogil=True, fastmath={"reassoc", "contract"})
def _negative_dot(x, y):  # type: ignore[no-untyped-def]
    """min(x, 0) . y, as `_dot`."""
    total = _ZERO
    for i in range(x.shape[0]):
        total += min(x[i], _ZERO) * y[i]
    return total


@_kernel
def _kink_minima(owners, chosen, folded, bias, spec_of, lines, weight_t, mid, index, count, unstable, start, stop, out):  # type: ignore[no-untyped-def]
    """Rows start..stop: min over s in [-1, 1] of a . relu2(W2 h1(s) + b2) + a0 for the box b = owners[q] and
    a = folded[g, chosen[q]] (C W3's row), a0 = bias[g, chosen[q]], g = spec_of[b]; relu2 by its lines (lower
    where a > 0, upper where a < 0), h1 = relu(c + r s) exact; weight_t = W2^T [F1, F2]. Lower bounds in
    float64 into out [Q]."""
    eps = np.finfo(np.float64).eps
    features = weight_t.shape[1]
    through = np.empty(features, np.float32)
    kinks = np.empty(weight_t.shape[0])
    jumps = np.empty(weight_t.shape[0])
    for q in range(start, stop):
        b = owners[q]
        a = folded[spec_of[b], chosen[q]]
        s_lo, s_up, b_up = lines[b, 0], lines[b, 1], lines[b, 2]
        # a h2 >= a (s_lo x2) + a- ((s_up - s_lo) x2 + b_up): the lower line where a > 0, the upper where a < 0.
        for o in range(features):
            through[o] = a[o] * s_lo[o] + min(a[o], _ZERO) * (s_up[o] - s_lo[o])
        shift = _negative_dot(a, b_up)
        # through . (W2 m(s) + b2) = centre + slope s, m the first ReLU's lines' midpoint (exact where stable).
        centre = np.float64(_dot(through, mid[b, 1])) + np.float64(shift) + np.float64(bias[spec_of[b], chosen[q]])
        slope = np.float64(_dot(through, mid[b, 0]))
        # At s = -1, plus the unstable neurons' hinges v_i (relu(c_i + r_i s) - m_i(s)), v = through W2 there.
        value = centre - slope
        terms = abs(centre) + 2 * abs(slope)
        found = count[b]
        for n in range(found):
            fields = unstable[b, n]
            v = np.float64(_dot(through, weight_t[index[b, n]]))
            c_i, r_i = np.float64(fields[0]), np.float64(fields[1])
            m_slope, m_centre = v * fields[4], v * fields[5]
            hinge = max(c_i - r_i, 0.0)  # relu at s = -1
            left = r_i if r_i < 0 else 0.0  # d/ds relu(c + r s) left of the kink
            value += v * hinge - m_centre + m_slope
            slope += v * left - m_slope
            kinks[n] = _kink(fields[0], fields[1])  # non-decreasing in n (`_first_layer`)
            jumps[n] = v * abs(r_i)
            terms += abs(v) * (hinge + 2 * abs(r_i) + 2 * abs(left)) + 2 * (abs(m_centre) + abs(m_slope))
        lowest = value
        position = -1.0
        for n in range(found):
            step = slope * (kinks[n] - position)
            value += step
            terms += abs(step)
            lowest = min(lowest, value)
            position = kinks[n]
            slope += jumps[n]
        step = slope * (1.0 - position)
        terms += abs(step) + abs(value)
        lowest = min(lowest, value + step)
        # Recursive summation of n terms errs by at most n eps sum |terms|: bound every sum used, generously.
        out[q] = lowest - 4 * (found + 4) * eps * terms


_POOLS: dict[int, ThreadPoolExecutor] = {}
"""The worker threads, by process id: a forked child inherits the pool but not its threads."""
_ONE_CALL_AT_A_TIME = threading.Lock()
"""Calls from several threads take turns: each uses all of torch's threads, and changes this thread's torch threads meanwhile."""


def _pool(workers: int) -> ThreadPoolExecutor:
    """This process's worker threads (kept: starting threads per call costs milliseconds). torch starts in them
    while this module holds it to one thread, so its own loops are single-threaded there; its matrix product
    (MKL) keeps MKL's default. Of the splits tried on 2 cores (both halves single-threaded, the whole product
    in a worker, this), this one measured fastest."""
    pool = _POOLS.get(os.getpid())
    if pool is None or pool._max_workers < workers:
        _POOLS.clear()
        pool = _POOLS[os.getpid()] = ThreadPoolExecutor(workers, thread_name_prefix="auditai-bounds")
    return pool


def _split(total: int, threads: int, part: Callable[[int, int], None]) -> None:
    """part(start, stop) over 0..total in `threads` slices at once: one in this thread, the others on the pool.
    The kernels release the GIL."""
    threads = max(1, min(threads, total // 64))
    if threads == 1:
        part(0, total)
        return
    ends = np.linspace(0, total, threads + 1).astype(np.int64).tolist()
    others = [_pool(threads - 1).submit(part, ends[i], ends[i + 1]) for i in range(1, threads)]
    part(ends[0], ends[1])
    for done in others:
        done.result()


def _run(kernel: Callable[..., None], total: int, threads: int, inputs: Sequence[object], outputs: Sequence[np.ndarray]) -> None:
    """kernel(*inputs, start, stop, *outputs) over start..stop = 0..total, split over `threads` threads."""
    _split(total, threads, lambda start, stop: kernel(*inputs, start, stop, *outputs))


def _linear_rows(x: torch.Tensor, linear: nn.Linear, threads: int) -> torch.Tensor:
    """linear(x) for rows x [N, 2, F] with the bias on row 1 only (centre rows), the samples split over `threads` threads."""
    out = x.new_empty(x.shape[0], 2, linear.weight.shape[0])
    weight_t = linear.weight.detach().T.contiguous()  # MKL is slower on the transposed view (1.4x on one thread)

    def part(start: int, stop: int) -> None:
        torch.mm(x[start:stop].view(-1, x.shape[2]), weight_t, out=out[start:stop].view(-1, out.shape[2]))
        if linear.bias is not None:
            out[start:stop, 1] += linear.bias.detach()

    _split(x.shape[0], threads, part)
    return out


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().contiguous().numpy()


def round_down(bound: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float64 lower bounds in `dtype`, rounded down (not to nearest), so they stay lower bounds."""
    narrow = bound.to(dtype)
    return torch.where(narrow.to(bound.dtype) > bound, torch.nextafter(narrow, torch.full_like(narrow, -torch.inf)), narrow)


def two_layer_margin_bounds(
    flat: Sequence[tuple[str, nn.Module]],
    rows: torch.Tensor,
    C: torch.Tensor,
    pieces: int,
    runs: list[tuple[int, int]] | None,
    refine: Callable[[torch.Tensor, BackSubstitute], torch.Tensor],
) -> torch.Tensor:
    """refine(forward, back_substitute): margin lower bounds [N, S] from the forward ones and a back-substitution
    of chosen rows, for the input rows [N, 2, F0] (slope, centre) of a network that `applies`.

    C [B, S, n_out], N = B * pieces (box b is sample b // pieces); runs: samples sharing C are
    contiguous in these runs (`linear_bounds._group_samples`; None: every sample has its own).
    Threads: the work is split over torch's intra-op threads by this module, and torch itself runs
    single-threaded in this thread meanwhile: the kernels and torch's OpenMP workers (which spin
    for a while after every parallel operation) would otherwise compete for the same cores
    (measured on 2 cores: 0.13 of a forward pass's throughput against 0.18). torch's thread count
    is restored on return; concurrent calls from other threads wait their turn.
    """
    with _ONE_CALL_AT_A_TIME:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            forward, back_substitute = _two_layer_bounds(flat, rows, C, pieces, runs, threads)
            return refine(forward, back_substitute)
        finally:
            torch.set_num_threads(threads)


def _two_layer_bounds(
    flat: Sequence[tuple[str, nn.Module]], rows: torch.Tensor, C: torch.Tensor, pieces: int, runs: list[tuple[int, int]] | None, threads: int
) -> tuple[torch.Tensor, BackSubstitute]:
    """Forward margin lower bounds [N, S] and the back-substitution of chosen rows (see `two_layer_margin_bounds`)."""
    first, second, final = (module for _, module in flat if isinstance(module, nn.Linear))
    assert isinstance(first, nn.Linear) and isinstance(second, nn.Linear) and isinstance(final, nn.Linear)
    n, hidden, out = rows.shape[0], first.weight.shape[0], second.weight.shape[0]
    if runs is not None:  # one folded C W3 per run of samples sharing C
        spec_c = C[torch.tensor([start for start, _ in runs])]
        spec_of = torch.repeat_interleave(torch.arange(len(runs)), torch.tensor([(end - start) * pieces for start, end in runs]))
    else:
        spec_c = C
        spec_of = torch.arange(C.shape[0]).repeat_interleave(pieces)
    spec_c = spec_c.to(torch.float32)
    folded = spec_c @ final.weight  # [G, S, F2]
    folded_bias = spec_c @ final.bias if final.bias is not None else spec_c.new_zeros(spec_c.shape[:2])
    spec_of_array = spec_of.numpy()

    middle = torch.empty(n, 2, hidden, dtype=torch.float32)
    index = np.empty((n, hidden), np.int32)
    count = np.empty(n, np.int64)
    unstable = np.empty((n, hidden, _UNSTABLE_FIELDS), np.float32)
    first_bias = first.bias if first.bias is not None else first.weight.new_zeros(hidden)
    _run(_first_layer, n, threads, (_numpy(rows), _numpy(first.weight.T), _numpy(first_bias)), (middle.numpy(), index, count, unstable))
    mid_array = _linear_rows(middle, second, threads).numpy()  # W2 m + b2 [N, 2, F2]
    forward = torch.empty(n, C.shape[1], dtype=torch.float32)
    lines = np.empty((n, 3, out), np.float32)
    spec_inputs = (_numpy(folded.clamp(min=0)), _numpy(folded.clamp(max=0)), _numpy(folded_bias), spec_of_array)
    _run(_second_layer, n, threads, (mid_array, index, count, unstable, _numpy(second.weight.abs().T), *spec_inputs), (forward.numpy(), lines))
    folded_array, bias_array, weight_t = _numpy(folded), _numpy(folded_bias), _numpy(second.weight.T)

    def back_substitute(boxes: torch.Tensor | None, chosen: torch.Tensor) -> torch.Tensor:
        owners = (torch.arange(chosen.shape[0]) if boxes is None else boxes)[:, None].expand_as(chosen)
        bound = np.empty(chosen.numel())
        inputs = (_numpy(owners.reshape(-1)), _numpy(chosen.reshape(-1)), folded_array, bias_array, spec_of_array, lines, weight_t, mid_array, index, count, unstable)
        _run(_kink_minima, chosen.numel(), threads, inputs, (bound,))
        return round_down(torch.from_numpy(bound), torch.float32).reshape(chosen.shape)

    return forward, back_substitute
