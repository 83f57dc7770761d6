"""The propagation state: rows of linear functions of s per box, and the unstable neurons.

Rows 0..k-1: the coefficients of s; row k: the bias (the value at the box centre); row k + 1
(when tracked): the interval, its lower end in `lower`, upper in `upper`. An interval row passes
through affine layers as interval arithmetic (mid/rad rows), and through reshapes like any row.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch


class _Unstable:
    """The neurons of a piecewise-linear activation whose input interval contains 0, per box.

    mask [N, F] over the flattened layer; count [N]; boxes, columns [nnz]: the (box, position)
    pairs, box-major, positions increasing; slot [nnz]: the pair's rank within its box; index
    [N, M]: the positions per box (padded with 0). Elsewhere the activation is linear on its
    input's range, so its lower and upper lines coincide there.
    """

    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = mask
        self.count = mask.sum(dim=1)
        width = int(self.count.max()) if mask.shape[0] else 0
        self.boxes, self.columns = mask.nonzero(as_tuple=True)
        self.flat = self.boxes * mask.shape[1] + self.columns  # positions in mask.reshape(-1)
        self._layouts: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.starts = torch.cumsum(self.count, 0) - self.count
        self.slot = torch.arange(len(self.boxes), device=mask.device) - self.starts[self.boxes]
        self.index = torch.zeros(mask.shape[0], width, dtype=torch.long, device=mask.device)
        self.index[self.boxes, self.slot] = self.columns

    def positions(self, lines: int, features: int) -> torch.Tensor:
        """Where the unstable entries of every row lie in a contiguous [N, lines, features] tensor, flattened: [lines * nnz], row-major in (line, nnz)."""
        flat = self.boxes * (lines * features) + self.columns
        return torch.cat([flat + j * features for j in range(lines)])

    def entries(self, values: torch.Tensor) -> torch.Tensor:
        """values [N, R, F] at the unstable positions: [R, nnz]."""
        n, lines, features = values.shape
        return values.contiguous().view(-1).index_select(0, self.positions(lines, features)).view(lines, -1)

    def padded(self, entries: torch.Tensor) -> torch.Tensor:
        """entries [R, nnz] as [N, M, R] in `index` order, 0 at padding."""
        out = entries.new_zeros(*self.index.shape, entries.shape[0])
        out[self.boxes, self.slot] = entries.T
        return out

    def matrix(self, entries: torch.Tensor) -> torch.Tensor:
        """The sparse CSR matrix [N * R, F] whose row b R + j holds entries[j] ([R, nnz]) at box b's unstable positions."""
        lines = entries.shape[0]
        if lines not in self._layouts:
            count = self.count[self.boxes]
            position = (self.starts[self.boxes] * lines + self.slot).repeat(lines)  # entry (j, t) -> row b R + j, after its j earlier rows
            position += torch.arange(lines, device=count.device).repeat_interleave(len(self.boxes)) * count.repeat(lines)
            crow = torch.zeros(len(self.count) * lines + 1, dtype=torch.long, device=count.device)
            torch.cumsum(self.count.repeat_interleave(lines), 0, out=crow[1:])
            columns = torch.empty_like(position)
            columns[position] = self.columns.repeat(lines)
            self._layouts[lines] = (crow, columns, position)
        crow, columns, position = self._layouts[lines]
        values = entries.new_empty(position.shape)
        values[position] = entries.reshape(-1)
        return _csr(crow, columns, values, (len(self.count) * lines, self.mask.shape[1]))

    def sampled(self, a: torch.Tensor, weight: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """(a @ weight) at the unstable positions of each row's box: a [R, out], weight [out, F], boxes [R] -> [R, M] in `index` order (0 at padding)."""
        count = self.count[boxes]
        crow = torch.zeros(len(boxes) + 1, dtype=torch.long, device=a.device)
        torch.cumsum(count, 0, out=crow[1:])
        total = int(crow[-1])
        row = torch.repeat_interleave(torch.arange(len(boxes), device=a.device), count, output_size=total)
        slot = torch.arange(total, device=a.device) - crow[row]
        mask = _csr(crow, self.columns[self.starts[boxes][row] + slot], a.new_zeros(total), (len(boxes), weight.shape[1]))
        values = torch.sparse.sampled_addmm(mask, a, weight, beta=0.0).values()
        out = a.new_zeros(len(boxes), self.index.shape[1])
        out[row, slot] = values
        return out


def _csr(crow: torch.Tensor, columns: torch.Tensor, values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A sparse CSR matrix (columns increasing within each row, by construction: invariants are not re-checked)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(crow, columns, values, size, check_invariants=False)


@dataclass
class _State:
    lower: torch.Tensor  # [N, R, *S], R = k + 1, or k + 2 with the interval row
    upper: torch.Tensor | None  # None: the same as lower (an exact affine function, no interval row)
    k: int
    unstable: _Unstable | None = None  # upper - lower vanishes outside these (flattened) positions; see `_sparse_gap_linear`

    @property
    def up(self) -> torch.Tensor:
        return self.lower if self.upper is None else self.upper

    @property
    def tracked(self) -> bool:
        return self.lower.shape[1] == self.k + 2


def _spread(rows: torch.Tensor, k: int) -> torch.Tensor:
    """max - centre over s in [-1, 1]^k of the linear functions in rows[:, :k + 1]: sum_j |a_j|."""
    return rows[:, 0].abs() if k == 1 else rows[:, :k].abs().sum(dim=1)


def _range(rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) over s in [-1, 1]^k of the linear functions in rows[:, :k + 1]."""
    centre, spread = rows[:, k], _spread(rows, k)
    return centre - spread, centre + spread


def _grow(rows: torch.Tensor, count: int) -> torch.Tensor:
    """rows with extra (zero) rows up to `count`."""
    extra = rows.new_zeros(rows.shape[0], count - rows.shape[1], *rows.shape[2:])
    return torch.cat([rows, extra], dim=1)
