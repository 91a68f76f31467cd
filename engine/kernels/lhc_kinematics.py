"""Four-vector kinematics of collider objects: pt, eta, phi, mass and pair invariant masses.

Pure numpy functions. Objects come either regular, one (events, objects) array per component
(muon 1 and muon 2 in flat columns), or jagged, one flat array per component over all objects
with per-event offsets (all muons of an event, as engine.jagged stores them); awkward is needed
only to take a chunk's collection apart (`jagged_components`), never for the arithmetic, which
numpy does on flat buffers at memory speed. Everything is computed in float64: E^2 - p^2 of a
40 GeV muon cancels to 1e-5 of its terms, which float32 would turn into noise. The mass of a
vector with E^2 < p^2 (resolution) is -sqrt(p^2 - E^2), the ROOT TLorentzVector convention, so
such events stay visible.

The arithmetic is written for memory traffic, which is what it costs: pt is sqrt(px^2 + py^2)
(ROOT's TVector3::Perp; np.hypot, which guards against overflow above 1e154 GeV, costs about 7x
as much), and masses are squared and summed in place in one or two buffers, in the order
E^2 - ((px^2 + py^2) + pz^2), so they are bit for bit the plain numpy expression's. Leading
and subleading objects are picked without branches (`Swap`), and eta comes from numpy's
vectorised log instead of libm's scalar asinh (`pseudorapidity`, as accurate). Measured on 10^6
real dimuon events (one core of a shared 2-core machine): the seven columns the shipped
lhc_dimuon recipe reads went from 75 to 28 ns an event (np.hypot 17 ns an element against 2.4
for the square root of squares; np.where on a per-event swap 3.6 ns against 1.1 for selecting
bits); with the load of that machine at 7 the chunk's kinematics, cut and fill went from 91 to
62 ns an event (eta 25 -> 11 ns a muon, the swap masks 2.9 -> 0.4 ms per 10^6 events).
Two objects per event in numpy arrays (the dimuon case) now take one numba pass instead
(lhc_fused, `leading_regular`); the array code here is its reference and the path for the rest.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # imported where arrays are computed: loading the ops must not pay for awkward
    from collections.abc import Callable

    import awkward as ak

CARTESIAN = ("px", "py", "pz", "E")
POLAR = ("pt", "eta", "phi", "mass")
PT = " pt"  # the objects' pt, computed once for the ordering (no field can be named so)
BLOCK = 1 << 14  # elements per block of a chained kernel: its scratch buffers stay in the L2 cache
FUSED_KEYS = ("1_pt", "2_pt", "1_eta", "2_eta", "12_mass")  # lhc_fused.dimuon_pass, in its order


def to_cartesian(pt, eta, phi, mass) -> dict:
    """(px, py, pz, E) of vectors given as transverse momentum, pseudorapidity, angle and mass."""
    pt, eta, phi, mass = (_f64(v) for v in (pt, eta, phi, mass))
    pz = pt * np.sinh(eta)
    return {"px": pt * np.cos(phi), "py": pt * np.sin(phi), "pz": pz, "E": np.sqrt(pt**2 + pz**2 + mass**2)}


def to_polar(px, py, pz, E) -> dict:
    """(pt, eta, phi, mass) of vectors given by their components; eta of pt = 0 is +-inf."""
    px, py, pz, E = (_f64(v) for v in (px, py, pz, E))
    pt = transverse(px, py)
    return {
        "pt": pt,
        "eta": pseudorapidity(pz, pt),
        "phi": np.arctan2(py, px),
        "mass": signed_mass(E, px, py, pz),
    }


def transverse(px, py) -> np.ndarray:
    """sqrt(px^2 + py^2) in float64: one new array and one scratch buffer."""
    pt = _square(px)
    scratch = _square(py)
    pt += scratch
    return np.sqrt(pt, out=pt)


def pseudorapidity(pz, pt) -> np.ndarray:
    """arcsinh(pz / pt) in one new array, +-inf where pt = 0, block by block.

    np.arcsinh is libm's scalar asinh, 21-25 ns an element; the same function from numpy's
    vectorised log costs ~11 (`_asinh_ratio`), as accurate: within 1.8 ulp of the exact value on
    10^6 real muons, where np.arcsinh is within 1.9. Blocks of BLOCK elements keep the chain's
    two scratch buffers in cache. The few elements whose squares overflow (|pz| > 1e154 pt) or
    that are NaN get np.arcsinh itself.
    """
    shape = np.broadcast_shapes(np.shape(pz), np.shape(pt))
    pz, pt = (np.broadcast_to(v, shape).reshape(-1) for v in (pz, pt))
    eta = np.empty(shape)
    flat = eta.reshape(-1)
    scratch = np.empty((2, min(BLOCK, flat.size)))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for start in range(0, flat.size, BLOCK):
            end = min(start + BLOCK, flat.size)
            _asinh_ratio(pz[start:end], pt[start:end], flat[start:end], *scratch[:, : end - start])
        left = np.flatnonzero(np.isnan(flat))
        if left.size:
            flat[left] = np.arcsinh(np.divide(pz[left], pt[left], dtype=np.float64))
    return eta


def _asinh_ratio(pz, pt, out, u, w) -> None:
    """out = asinh(z), z = pz / pt, as copysign(log1p(u), z) with u = |z| + z^2 / (1 + sqrt(1 + z^2))
    (= sqrt(1 + z^2) - 1 + |z| without cancelling) and log1p(u) = log(w) - ((w - 1) - u) / w,
    w = 1 + u rounded: the second term restores what rounding w lost, so eta near 0 keeps its
    relative precision (plain log(|z| + sqrt(1 + z^2)) loses it). u and w are scratch."""
    np.divide(pz, pt, out=out, dtype=np.float64)
    np.multiply(out, out, out=u)
    np.add(u, 1.0, out=w)
    np.sqrt(w, out=w)
    w += 1.0
    u /= w
    np.abs(out, out=w)
    u += w
    np.add(u, 1.0, out=w)
    np.subtract(w, 1.0, out=out)
    out -= u
    out /= w
    np.log(w, out=w)
    w -= out
    np.copysign(w, pz, out=out, dtype=np.float64)


def signed_mass(E, px, py, pz) -> np.ndarray:
    """sqrt(E^2 - p^2), negative where E^2 < p^2 (see the module docstring)."""
    p2 = _square(px)
    scratch = _square(py)
    p2 += scratch
    np.multiply(pz, pz, out=scratch, dtype=np.float64)
    p2 += scratch
    np.multiply(E, E, out=scratch, dtype=np.float64)
    scratch -= p2
    return _signed_root(scratch, out=p2)


def pair_sum_mass(first: dict, second: dict) -> np.ndarray:
    """signed_mass of the sum of two objects' four-vectors, the sums squared in place (two new
    arrays in all instead of eleven)."""
    p2 = _sum(first["px"], second["px"])
    p2 *= p2
    scratch = _sum(first["py"], second["py"])
    scratch *= scratch
    p2 += scratch
    np.add(first["pz"], second["pz"], out=scratch, dtype=np.float64)
    scratch *= scratch
    p2 += scratch
    np.add(first["E"], second["E"], out=scratch, dtype=np.float64)
    scratch *= scratch
    scratch -= p2
    return _signed_root(scratch, out=p2)


def pair_sum_pt(first: dict, second: dict) -> np.ndarray:
    """The transverse momentum of the sum of two objects' four-vectors."""
    pt = _sum(first["px"], second["px"])
    pt *= pt
    scratch = _sum(first["py"], second["py"])
    scratch *= scratch
    pt += scratch
    return np.sqrt(pt, out=pt)


def _square(values) -> np.ndarray:
    out = np.empty(np.shape(values))
    return np.multiply(values, values, out=out, dtype=np.float64)


def _sum(a, b) -> np.ndarray:
    out = np.empty(np.broadcast_shapes(np.shape(a), np.shape(b)))
    return np.add(a, b, out=out, dtype=np.float64)


def _signed_root(m2: np.ndarray, out: np.ndarray) -> np.ndarray:
    """copysign(sqrt(|m2|), m2) into `out` (a buffer of m2's shape that may be overwritten)."""
    np.abs(m2, out=out)
    np.sqrt(out, out=out)
    return np.copysign(out, m2, out=out)


class Leading:
    """The leading objects of each event of a chunk, columns computed only when asked for.

    `gather(field, i)` gives field of every event's i-th object by pt (NaN where there is none).
    A column (`1_pt`, `12_mass`, ...) is computed from the few gathered fields it needs, so an
    analysis that reads three of the columns pays for three; gathered fields are kept for the
    next column. `pair`, where given, holds the two objects whose sum the `12_` columns are
    (any order: a sum does not depend on it), sparing the gathers. `one_pass`, where given,
    is a cached callable giving the columns of FUSED_KEYS from one numba pass (lhc_fused).
    """

    def __init__(
        self,
        gather,
        sizes: np.ndarray,
        count: int,
        extras: tuple[str, ...],
        pair: tuple[dict, dict] | None = None,
        one_pass: Callable[[], dict] | None = None,
    ):
        self._gather, self.sizes, self.count, self.extras = gather, sizes, count, extras
        self._pair, self._one_pass = pair, one_pass
        self._cache: dict[tuple[str, int], np.ndarray] = {}

    def keys(self) -> list[str]:
        keys = ["count"] + [f"{i + 1}_{n}" for i in range(self.count) for n in (*POLAR, *self.extras)]
        return keys + (["12_mass", "12_pt"] if self.count >= 2 else [])

    def slot(self, field: str, i: int) -> np.ndarray:
        if (field, i) not in self._cache:
            self._cache[field, i] = self._gather(field, i)
        return self._cache[field, i]

    def pair(self, components: tuple[str, ...]) -> tuple[dict, dict]:
        if self._pair is not None:
            return self._pair
        return tuple({c: self.slot(c, i) for c in components} for i in (0, 1))

    def column(self, key: str) -> np.ndarray:
        if key not in self.keys():
            raise KeyError(f"expected one of {', '.join(self.keys())}, found {key!r}")
        if key == "count":
            return np.asarray(self.sizes, np.int64)
        if self._one_pass is not None and key in FUSED_KEYS:
            return self._one_pass()[key]
        if key == "12_pt":
            return pair_sum_pt(*self.pair(("px", "py")))
        if key == "12_mass":
            return pair_sum_mass(*self.pair(CARTESIAN))
        index, name = key.split("_", 1)
        i = int(index) - 1
        if name in self.extras:
            return _f64(self.slot(name, i))
        if name == "pt":
            return self.slot(PT, i)
        if name == "eta":
            return pseudorapidity(self.slot("pz", i), self.slot(PT, i))
        px, py = self.slot("px", i), self.slot("py", i)
        if name == "phi":
            return np.arctan2(py, px, dtype=np.float64)
        return signed_mass(self.slot("E", i), px, py, self.slot("pz", i))

    def columns(self) -> dict[str, np.ndarray]:
        return {key: self.column(key) for key in self.keys()}


class Swap:
    """`where(swap, second, first)` without branches: np.where on a condition that flips at
    random per event mispredicts half its branches (3.5 ns an element against 0.3 for an add);
    selecting bits, first ^ ((first ^ second) & mask), gives the same values, NaN included."""

    def __init__(self, swap: np.ndarray):
        self.swap = np.asarray(swap, bool)
        self._masks: dict[int, np.ndarray] = {}

    def __call__(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        if first.dtype != second.dtype or first.dtype.kind not in "biuf" or first.shape != self.swap.shape:
            return np.where(self.swap, second, first)
        bits = np.dtype(f"u{first.dtype.itemsize}")
        low = np.ascontiguousarray(first).view(bits)
        out = np.bitwise_xor(low, np.ascontiguousarray(second).view(bits))
        out &= self._mask(bits)
        out ^= low
        return out.view(first.dtype)

    def _mask(self, bits: np.dtype) -> np.ndarray:
        if bits.itemsize not in self._masks:  # all ones where swapped, zeros elsewhere: one pass
            # (bool.astype(uint64) then negating took 2.9 ms per 10^6 events, this 0.43)
            self._masks[bits.itemsize] = np.negative(self.swap.view(np.uint8), dtype=bits)
        return self._masks[bits.itemsize]


def leading_regular(
    objects: list[dict[str, np.ndarray]], count: int, extras: tuple[str, ...] = ()
) -> Leading:
    """The leading objects of a fixed number of objects per event, each given by one array per
    field over the events (muon 1 and muon 2 in flat columns): no lists, no sort for two.
    Gathered fields keep their stored dtype (a charge stays an integer until it is a column)."""
    if len(objects) == 2 and all(isinstance(o[c], np.ndarray) for o in objects for c in CARTESIAN):
        return _leading_pair_fused(objects, count, extras)
    return leading_regular_array(objects, count, extras)


def leading_regular_array(
    objects: list[dict[str, np.ndarray]], count: int, extras: tuple[str, ...] = ()
) -> Leading:
    """leading_regular in array operations only: the reference the numba pass is tested against
    (tests/kernels/test_lhc_fused.py), and the path for any number of objects."""
    objects = [{**o, PT: transverse(o["px"], o["py"])} for o in objects]
    pts = [o[PT] for o in objects]
    events, k = len(pts[0]), len(objects)
    pair = None
    if k == 2:  # the dimuon case: one comparison per event (stable: ties keep the given order)
        pick = Swap(pts[1] > pts[0])

        def gather(field: str, i: int) -> np.ndarray:
            if i >= 2:
                return np.full(events, np.nan)
            first, second = (np.asarray(o[field]) for o in objects)
            return pick(first, second) if i == 0 else pick(second, first)

        pair = (objects[0], objects[1])
    else:
        order = np.argsort(-np.stack(pts, axis=1), axis=1, kind="stable")[:, :count]
        rows = np.arange(events)

        def gather(field: str, i: int) -> np.ndarray:
            if i >= k:
                return np.full(events, np.nan)
            return np.stack([_f64(o[field]) for o in objects], axis=1)[rows, order[:, i]]

    return Leading(gather, np.full(events, k, np.int64), count, extras, pair)


def _leading_pair_fused(
    objects: list[dict[str, np.ndarray]], count: int, extras: tuple[str, ...]
) -> Leading:
    """leading_regular of two objects per event on numpy arrays: pt, eta, the order and the pair
    mass come from one numba pass (lhc_fused.dimuon_pass), made when the first of them is asked
    for; other fields and columns (phi, single masses, extras) are gathered with its swap mask."""
    events = len(objects[0]["px"])

    @functools.cache
    def one_pass() -> dict:
        from .lhc_fused import dimuon_pass

        swap = np.empty(events, bool)
        columns = {key: np.empty(events) for key in FUSED_KEYS}
        parts = [np.ascontiguousarray(_f64(o[c])) for o in objects for c in CARTESIAN]
        dimuon_pass(*parts, swap, *columns.values())
        return {"swap": swap, **columns}

    @functools.cache
    def ordered(field: str) -> tuple[np.ndarray, np.ndarray]:
        from .lhc_fused import order_pair

        first, second = (np.ascontiguousarray(o[field]) for o in objects)
        if first.dtype != second.dtype or first.dtype.kind not in "biuf":
            pick = Swap(one_pass()["swap"])
            return pick(first, second), pick(second, first)
        lead, sub = np.empty_like(first), np.empty_like(first)
        order_pair(first, second, one_pass()["swap"], lead, sub)
        return lead, sub

    def gather(field: str, i: int) -> np.ndarray:
        if i >= 2:
            return np.full(events, np.nan)
        return one_pass()[f"{i + 1}_pt"] if field == PT else ordered(field)[i]

    return Leading(gather, np.full(events, 2, np.int64), count, extras, (objects[0], objects[1]), one_pass)


def leading_jagged(
    offsets: np.ndarray, objects: dict[str, np.ndarray], count: int, extras: tuple[str, ...] = ()
) -> Leading:
    """The leading objects of a variable number of objects per event: each field a flat array
    over all objects, event j's objects at offsets[j]:offsets[j + 1]."""
    offsets = np.asarray(offsets, np.int64)
    events = len(offsets) - 1
    sizes = np.diff(offsets)
    start = offsets[0]
    objects = {**objects, PT: transverse(objects["px"], objects["py"])}
    pt = objects[PT][start : offsets[-1]]
    event = np.repeat(np.arange(events), sizes)
    order = np.lexsort((-pt, event))  # by event, then by descending pt; stable for equal pt
    rank = np.arange(len(order)) - (offsets[event] - start)
    picks = []  # per leading slot: (events that have such an object, where it is)
    for i in range(max(count, 2)):
        at = np.flatnonzero(rank == i)
        picks.append((event[at], order[at] + start))

    def gather(field: str, i: int) -> np.ndarray:
        where, source = picks[i]
        column = np.full(events, np.nan)
        column[where] = _f64(objects[field])[source]
        return column

    return Leading(gather, sizes, count, extras)


def jagged_components(objects: ak.Array, fields: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(offsets, field -> flat numpy values) of a list of records per event (no copy where packed)."""
    import awkward as ak

    layout = ak.to_layout(objects)
    while isinstance(layout, ak.contents.IndexedArray):  # a sliced array: its elements in order
        layout = layout.project()
    if not isinstance(layout, ak.contents.ListOffsetArray | ak.contents.ListArray):
        raise ValueError(f"expected a list of objects per event, found {objects.type}")
    if isinstance(layout, ak.contents.ListArray):
        layout = layout.to_ListOffsetArray64(True)
    offsets = np.asarray(layout.offsets)
    content = layout.content
    flat = {}
    for name in fields:
        leaf = content[name]
        flat[name] = ak.to_numpy(ak.Array(leaf))
    return offsets, flat


def leading_objects(objects: ak.Array, count: int, extras: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Per-event columns of the `count` highest-pt objects and of the pair of the first two.

    `objects` is a list of records per event with fields px, py, pz, E (plus `extras`, such as
    a charge, copied for each leading object). Returns `{i}_pt`, `{i}_eta`, `{i}_phi`,
    `{i}_mass`, `{i}_<extra>` for i = 1..count (NaN where an event has fewer objects),
    `count`, and with count >= 2 `12_mass` and `12_pt` of the two leading objects together.
    """
    offsets, flat = jagged_components(objects, [*CARTESIAN, *extras])
    return leading_jagged(offsets, flat, count, extras).columns()


def _f64(values):
    if isinstance(values, np.ndarray):
        return values.astype(np.float64, copy=False)
    import awkward as ak

    if isinstance(values, ak.Array):
        return ak.values_astype(values, np.float64)
    return np.asarray(values, np.float64)
