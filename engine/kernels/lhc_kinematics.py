"""Four-vector kinematics of collider objects: pt, eta, phi, mass and pair invariant masses.

Pure numpy functions. Objects come either regular, one (events, objects) array per component
(muon 1 and muon 2 in flat columns), or jagged, one flat array per component over all objects
with per-event offsets (all muons of an event, as engine.jagged stores them); awkward is needed
only to take a chunk's collection apart (`jagged_components`), never for the arithmetic, which
numpy does on flat buffers at memory speed. Everything is computed in float64: E^2 - p^2 of a
40 GeV muon cancels to 1e-5 of its terms, which float32 would turn into noise. The mass of a
vector with E^2 < p^2 (resolution) is -sqrt(p^2 - E^2), the ROOT TLorentzVector convention, so
such events stay visible.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # imported where arrays are computed: loading the ops must not pay for awkward
    import awkward as ak

CARTESIAN = ("px", "py", "pz", "E")
POLAR = ("pt", "eta", "phi", "mass")
PT = " pt"  # the objects' pt, computed once for the ordering (no field can be named so)


def to_cartesian(pt, eta, phi, mass) -> dict:
    """(px, py, pz, E) of vectors given as transverse momentum, pseudorapidity, angle and mass."""
    pt, eta, phi, mass = (_f64(v) for v in (pt, eta, phi, mass))
    pz = pt * np.sinh(eta)
    return {"px": pt * np.cos(phi), "py": pt * np.sin(phi), "pz": pz, "E": np.sqrt(pt**2 + pz**2 + mass**2)}


def to_polar(px, py, pz, E) -> dict:
    """(pt, eta, phi, mass) of vectors given by their components; eta of pt = 0 is +-inf."""
    px, py, pz, E = (_f64(v) for v in (px, py, pz, E))
    pt = np.hypot(px, py)
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = np.arcsinh(pz / pt)
    return {"pt": pt, "eta": eta, "phi": np.arctan2(py, px), "mass": signed_mass(E, px, py, pz)}


def signed_mass(E, px, py, pz):
    m2 = E**2 - (px**2 + py**2 + pz**2)
    if isinstance(m2, np.ndarray) and m2.ndim:  # the same numbers in three passes instead of four
        mass = np.sqrt(np.abs(m2))
        return np.copysign(mass, m2, out=mass)
    return np.sign(m2) * np.sqrt(np.abs(m2))


class Leading:
    """The leading objects of each event of a chunk, columns computed only when asked for.

    `gather(field, i)` gives field of every event's i-th object by pt (NaN where there is none).
    A column (`1_pt`, `12_mass`, ...) is computed from the few gathered fields it needs, so an
    analysis that reads three of the columns pays for three; gathered fields are kept for the
    next column. `pair(component)` gives the two leading objects' sum of a component.
    """

    def __init__(self, gather, sizes: np.ndarray, count: int, extras: tuple[str, ...], pair=None):
        self._gather, self.sizes, self.count, self.extras = gather, sizes, count, extras
        self._pair = pair
        self._cache: dict[tuple[str, int], np.ndarray] = {}

    def keys(self) -> list[str]:
        keys = ["count"] + [f"{i + 1}_{n}" for i in range(self.count) for n in (*POLAR, *self.extras)]
        return keys + (["12_mass", "12_pt"] if self.count >= 2 else [])

    def slot(self, field: str, i: int) -> np.ndarray:
        if (field, i) not in self._cache:
            self._cache[field, i] = self._gather(field, i)
        return self._cache[field, i]

    def pair(self, component: str) -> np.ndarray:
        if self._pair is not None:
            return self._pair(component)
        return self.slot(component, 0) + self.slot(component, 1)

    def column(self, key: str) -> np.ndarray:
        if key not in self.keys():
            raise KeyError(f"expected one of {', '.join(self.keys())}, found {key!r}")
        if key == "count":
            return np.asarray(self.sizes, np.int64)
        if key.startswith("12_"):
            px, py = self.pair("px"), self.pair("py")
            if key == "12_pt":
                return np.hypot(px, py)
            return signed_mass(self.pair("E"), px, py, self.pair("pz"))
        index, name = key.split("_", 1)
        i = int(index) - 1
        if name in self.extras:
            return self.slot(name, i)
        if name == "pt":
            return self.slot(PT, i)
        if name == "eta":
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.arcsinh(self.slot("pz", i) / self.slot(PT, i))
        px, py = self.slot("px", i), self.slot("py", i)
        if name == "phi":
            return np.arctan2(py, px)
        return signed_mass(self.slot("E", i), px, py, self.slot("pz", i))

    def columns(self) -> dict[str, np.ndarray]:
        return {key: self.column(key) for key in self.keys()}


def leading_regular(
    objects: list[dict[str, np.ndarray]], count: int, extras: tuple[str, ...] = ()
) -> Leading:
    """The leading objects of a fixed number of objects per event, each given by one array per
    field over the events (muon 1 and muon 2 in flat columns): no lists, no sort for two."""
    objects = [{**o, PT: np.hypot(_f64(o["px"]), _f64(o["py"]))} for o in objects]
    pts = [o[PT] for o in objects]
    events, k = len(pts[0]), len(objects)
    pair = None
    if k == 2:  # the dimuon case: one comparison per event (stable: ties keep the given order)
        swap = pts[1] > pts[0]

        def gather(field: str, i: int) -> np.ndarray:
            if i >= 2:
                return np.full(events, np.nan)
            first, second = (_f64(o[field]) for o in objects)
            return np.where(swap, second, first) if i == 0 else np.where(swap, first, second)

        def pair(component: str) -> np.ndarray:  # a sum does not depend on the order
            return _f64(objects[0][component]) + _f64(objects[1][component])
    else:
        order = np.argsort(-np.stack(pts, axis=1), axis=1, kind="stable")[:, :count]
        rows = np.arange(events)

        def gather(field: str, i: int) -> np.ndarray:
            if i >= k:
                return np.full(events, np.nan)
            return np.stack([_f64(o[field]) for o in objects], axis=1)[rows, order[:, i]]

    return Leading(gather, np.full(events, k, np.int64), count, extras, pair)


def leading_jagged(
    offsets: np.ndarray, objects: dict[str, np.ndarray], count: int, extras: tuple[str, ...] = ()
) -> Leading:
    """The leading objects of a variable number of objects per event: each field a flat array
    over all objects, event j's objects at offsets[j]:offsets[j + 1]."""
    offsets = np.asarray(offsets, np.int64)
    events = len(offsets) - 1
    sizes = np.diff(offsets)
    start = offsets[0]
    objects = {**objects, PT: np.hypot(_f64(objects["px"]), _f64(objects["py"]))}
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
