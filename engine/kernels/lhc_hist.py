"""Histogram filling for event columns: counts and sums of squared weights, chunk by chunk.

A chunk's fill returns one flat float64 vector [sum w per bin..., sum w^2 per bin..., events
considered, events in range], so per-chunk results add up with a plain sum: dask reduces them
in a tree and the bins come out exactly as a one-pass fill would give them. Bins are half-open
[low, high), as in boost-histogram/hist; values outside the axes and NaN are not counted (their
number is what `events considered - events in range` reports). Regular axes find bins by one
multiply, variable axes by binary search.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Axis:
    """One histogram axis: bin edges (strictly increasing) and whether they are evenly spaced."""

    edges: np.ndarray
    regular: bool

    @classmethod
    def from_regular(cls, bins: int, start: float, stop: float) -> Axis:
        return cls(np.linspace(start, stop, bins + 1), True)

    @property
    def bins(self) -> int:
        return len(self.edges) - 1

    def index(self, values: np.ndarray) -> np.ndarray:
        """Bin of each value, -1 outside [first edge, last edge) and for NaN."""
        values = np.asarray(values, dtype=np.float64)
        if self.regular:  # in place: two float and two boolean buffers instead of eight
            start, stop = self.edges[0], self.edges[-1]
            with np.errstate(invalid="ignore"):
                scaled = np.subtract(values, start)
                scaled *= self.bins / (stop - start)
                outside = np.less(values, start)
                outside |= ~(values < stop)  # NaN too
            np.putmask(scaled, outside, -1.0)
            found = scaled.astype(np.int64)
            return np.minimum(found, self.bins - 1, out=found)  # rounding at the top edge
        found = np.searchsorted(self.edges, values, side="right") - 1
        found[~(found < self.bins) | np.isnan(values)] = -1
        return found


def flat_size(axes: list[Axis]) -> int:
    """Length of a fill vector for these axes."""
    return 2 * int(np.prod([a.bins for a in axes])) + 2


def fill(
    axes: list[Axis],
    values: list[np.ndarray],
    weights: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """One chunk's fill vector (see the module docstring) for events where `mask` is true."""
    shape = tuple(a.bins for a in axes)
    size = int(np.prod(shape))
    keep = np.ones(len(values[0]), bool) if mask is None else np.asarray(mask, bool)
    indices = [axis.index(np.asarray(v)[keep]) for axis, v in zip(axes, values, strict=True)]
    inside = np.logical_and.reduce([i >= 0 for i in indices])
    flat = np.ravel_multi_index([i[inside] for i in indices], shape) if len(axes) > 1 else indices[0][inside]
    if weights is None:
        counts = np.bincount(flat, minlength=size).astype(np.float64)
        squares = counts
    else:
        w = np.asarray(weights, np.float64)[keep][inside]
        counts = np.bincount(flat, weights=w, minlength=size)
        squares = np.bincount(flat, weights=w * w, minlength=size)
    return np.concatenate([counts, squares, [keep.sum(), inside.sum()]])


def unpack(vector: np.ndarray, axes: list[Axis]) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(sum of weights, sum of squared weights, events considered, events in range)."""
    shape = tuple(a.bins for a in axes)
    size = int(np.prod(shape))
    return (
        vector[:size].reshape(shape),
        vector[size : 2 * size].reshape(shape),
        int(vector[-2]),
        int(vector[-1]),
    )
