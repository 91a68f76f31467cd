"""Numba kernels for the per-event LHC work on numpy inputs: one pass over a chunk's events instead
of one numpy pass (and one chunk-sized temporary) per arithmetic step.

The array code in lhc_kinematics and lhc_hist stays the reference and the path for other arrays
(cupy, torch); these kernels do the same float operations in the same order, element by element,
and are imported only where numpy chunks are computed (loading the ops must not pay for numba).
pt, the ordering, the pair mass and every histogram bin are bit for bit the array path's; eta too
where numpy's log is libm's, as here, and within 2 ulp where numpy takes its SIMD log (each is
within an ulp of the exact value): tests/kernels/test_lhc_fused.py.

Measured on 10^6-event chunks of real CMS dimuons (one core of a shared 2-core machine, load 3-8,
CPU time): the seven columns the shipped lhc_dimuon recipe reads 68 -> 39 ns an event (the
dimuon pass 24, of which the two logs ~9), the chunk's kinematics + cut + fill 60 -> 33-38, the
fill 6.1 -> 1.9 ms. Besides the arithmetic they drop the chunk-sized temporaries, and with them
the page faults: with glibc's 32 MiB trim threshold (engine.memory) a process that had read the
lake faulted ~60 MB a chunk back in (150k faults, 0.4-0.6 system CPU-s at 10^7 events); now ~50.
One-off costs per process: importing numba ~0.2 CPU-s and its first dispatch ~0.65 (cached
kernels then load in 3-15 ms each); compiling them into an empty cache ~9 CPU-s (load 9).
"""

from __future__ import annotations

import math

import numba
import numpy as np

BLOCK = 4096  # events per block of dimuon_pass: its scratch stays in the L1/L2 cache


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _log1p_parts(pz: float, pt: float) -> tuple[float, float]:
    """(w, c) with asinh(pz / pt) = copysign(log(w) - c, pz): lhc_kinematics._asinh_ratio's
    formula (its docstring says why), split so that the loop around it has no call and
    vectorises; the log is taken in a second loop."""
    z = pz / pt
    u = z * z
    w = math.sqrt(u + 1.0) + 1.0
    u = u / w
    u = u + abs(z)
    w = u + 1.0
    return w, ((w - 1.0) - u) / w


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _finish_eta(w: float, c: float, pz: float, pt: float) -> float:
    """copysign(log(w) - c, pz); where that is NaN (pt = 0, overflow) asinh itself, as numpy's
    path falls back to np.arcsinh."""
    out = math.copysign(math.log(w) - c, pz)
    return math.asinh(pz / pt) if math.isnan(out) else out


@numba.njit(cache=True, nogil=True, error_model="numpy")
def dimuon_pass(px1, py1, pz1, e1, px2, py2, pz2, e2, swap, pt1, pt2, eta1, eta2, mass12) -> None:
    """Two objects per event, block by block: whether they swap (the second has the higher pt;
    ties keep the given order), pt and eta of the leading (1) and subleading (2) object, and the
    signed invariant mass of their sum. Float64 inputs; outputs are written in place.

    Each block is two loops over slices: `_arithmetic` has no call and vectorises (slices, so
    the index cannot be negative; error_model numpy, so a division has no ZeroDivisionError
    branch: eta's arithmetic 8.1 -> 1.8 ns an element), `_logs` then takes the logs."""
    n = px1.shape[0]
    c1, c2 = np.empty(BLOCK), np.empty(BLOCK)
    for start in range(0, n, BLOCK):
        end = min(start + BLOCK, n)
        size = end - start
        inputs = (px1[start:end], py1[start:end], pz1[start:end], e1[start:end])
        inputs2 = (px2[start:end], py2[start:end], pz2[start:end], e2[start:end])
        pts = (pt1[start:end], pt2[start:end])
        etas = (eta1[start:end], eta2[start:end])
        _arithmetic(*inputs, *inputs2, swap[start:end], *pts, *etas, mass12[start:end], c1[:size], c2[:size])
        _logs(pz1[start:end], pz2[start:end], swap[start:end], *pts, *etas, c1[:size], c2[:size])


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _arithmetic(px1, py1, pz1, e1, px2, py2, pz2, e2, swap, pt1, pt2, w1, w2, mass12, c1, c2) -> None:
    """All of dimuon_pass but the logs: eta's (w, c) of each object go to w1/w2 and c1/c2."""
    for j in range(px1.shape[0]):
        a = math.sqrt(px1[j] * px1[j] + py1[j] * py1[j])
        b = math.sqrt(px2[j] * px2[j] + py2[j] * py2[j])
        flip = b > a
        swap[j] = flip
        lead_pt = b if flip else a
        sub_pt = a if flip else b
        pt1[j] = lead_pt
        pt2[j] = sub_pt
        w, c = _log1p_parts(pz2[j] if flip else pz1[j], lead_pt)
        w1[j] = w
        c1[j] = c
        w, c = _log1p_parts(pz1[j] if flip else pz2[j], sub_pt)
        w2[j] = w
        c2[j] = c
        sx, sy, sz, se = px1[j] + px2[j], py1[j] + py2[j], pz1[j] + pz2[j], e1[j] + e2[j]
        p2 = sx * sx + sy * sy
        p2 = p2 + sz * sz
        m2 = se * se - p2
        mass12[j] = math.copysign(math.sqrt(abs(m2)), m2)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _logs(pz1, pz2, swap, pt1, pt2, eta1, eta2, c1, c2) -> None:
    """eta of both objects from the (w, c) that `_arithmetic` left in eta1/eta2 and c1/c2."""
    for j in range(pz1.shape[0]):
        lead, sub = (pz2[j], pz1[j]) if swap[j] else (pz1[j], pz2[j])
        eta1[j] = _finish_eta(eta1[j], c1[j], lead, pt1[j])
        eta2[j] = _finish_eta(eta2[j], c2[j], sub, pt2[j])


@numba.njit(cache=True, nogil=True)
def order_pair(first, second, swap, lead, sub) -> None:
    """lead, sub = (second, first) where swap else (first, second), in one pass and any dtype
    (the charge of both muons: Swap's bit selection took ~6 passes over the chunk)."""
    for j in range(first.shape[0]):
        a, b = first[j], second[j]
        lead[j] = b if swap[j] else a
        sub[j] = a if swap[j] else b


@numba.njit(cache=True, nogil=True, error_model="numpy")
def regular_fill(values, starts, stops, bins, mask, weights, out) -> None:
    """lhc_hist.fill for regular axes: `values` (axes, events) float64, `mask` bool per event,
    `weights` float64 per event or empty for counts, `out` the fill vector. As in lhc_hist.fill,
    every event gets a slot, 1 + its flat bin or 0 when dropped, found by the same float
    operations as Axis.locate, and the slots are summed in event order as np.bincount sums them
    (counts as integers, exact in any order): every bin is bit for bit numpy's. Block by block:
    `_slots` has no branch and vectorises (int32 bins: AVX2 converts doubles to int32 only; a
    flat bin is below MAX_BINS; as int64 the slot pass took 4.6 ms per 10^6 events, now 0.9), then
    one loop adds: 6.1 -> 1.9 ms per 10^6 events in all."""
    size = 1
    for k in range(bins.shape[0]):
        size *= bins[k]
    scale = bins / (stops - starts)
    weighted = weights.shape[0] > 0
    counts = np.zeros((4, size + 1), np.int64)  # 4 interleaved: no chain of adds to one bin
    sums, squares = np.zeros(size + 1), np.zeros(size + 1)
    slot, ok = np.empty(BLOCK, np.int32), np.empty(BLOCK, np.bool_)
    events = values.shape[1]
    for start in range(0, events, BLOCK):
        end = min(start + BLOCK, events)
        n = end - start
        _slots(values, start, end, starts, stops, bins, scale, mask[start:end], slot[:n], ok[:n])
        for i in range(n):
            counts[i & 3, slot[i]] += 1
        if weighted:
            for i in range(n):
                w = weights[start + i]
                sums[slot[i]] += w
                squares[slot[i]] += w * w
    total = counts.sum(axis=0)
    if not weighted:
        sums[:] = total
        squares[:] = total
    out[:size] = sums[1:]
    out[size : 2 * size] = squares[1:]
    out[2 * size] = np.count_nonzero(mask)
    out[2 * size + 1] = total[1:].sum()


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _slots(values, start, end, starts, stops, bins, scale, mask, slot, ok) -> None:
    """slot = 1 + flat bin of events start:end where kept and inside every axis, else 0; ok says
    which. Each axis's values are a contiguous slice (values[:, start:end] would have unknown
    strides and not vectorise)."""
    for j in range(mask.shape[0]):
        ok[j] = mask[j]
        slot[j] = 0
    stride = 1
    for k in range(bins.shape[0] - 1, -1, -1):
        row = values[k][start:end]
        _axis_slots(row, starts[k], stops[k], np.int32(bins[k]), scale[k], np.int32(stride), slot, ok)
        stride *= bins[k]
    for j in range(mask.shape[0]):
        slot[j] = (slot[j] + 1) * ok[j]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _axis_slots(values, start, stop, bins, scale, stride, slot, ok) -> None:
    """One axis's part of `_slots`: its bin times `stride` added to slot, ok and-ed with inside."""
    for j in range(values.shape[0]):
        x = values[j]
        inside = ok[j] & (x >= start) & (x < stop)
        found = np.int32((x - start) * scale if inside else 0.0)
        slot[j] += min(found, bins - 1) * stride
        ok[j] = inside
