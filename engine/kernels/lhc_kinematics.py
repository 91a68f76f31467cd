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


def to_cartesian(pt, eta, phi, mass) -> dict:
    """(px, py, pz, E) of vectors given as transverse momentum, pseudorapidity, angle and mass."""
    pt, eta, phi, mass = (_f64(v) for v in (pt, eta, phi, mass))
    pz = pt * np.sinh(eta)
    return {"px": pt * np.cos(phi), "py": pt * np.sin(phi), "pz": pz,
            "E": np.sqrt(pt**2 + pz**2 + mass**2)}


def to_polar(px, py, pz, E) -> dict:
    """(pt, eta, phi, mass) of vectors given by their components; eta of pt = 0 is +-inf."""
    px, py, pz, E = (_f64(v) for v in (px, py, pz, E))
    pt = np.hypot(px, py)
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = np.arcsinh(pz / pt)
    return {"pt": pt, "eta": eta, "phi": np.arctan2(py, px), "mass": signed_mass(E, px, py, pz)}


def signed_mass(E, px, py, pz):
    m2 = E**2 - (px**2 + py**2 + pz**2)
    return np.sign(m2) * np.sqrt(np.abs(m2))


def leading_regular(objects: list[dict[str, np.ndarray]], count: int,
                    extras: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """`leading_objects` of a fixed number of objects per event, each given by one array per
    field over the events (muon 1 and muon 2 in flat columns): no lists, no sort for two."""
    pts = [np.hypot(_f64(o["px"]), _f64(o["py"])) for o in objects]
    events, k = len(pts[0]), len(objects)
    names = (*CARTESIAN, *extras)
    slots: dict[str, list[np.ndarray]] = {}
    if k == 2:  # the dimuon case: one comparison per event (stable: ties keep the given order)
        swap = pts[1] > pts[0]
        for name in names:
            first, second = (_f64(o[name]) for o in objects)
            slots[name] = [np.where(swap, second, first), np.where(swap, first, second)]
    else:
        order = np.argsort(-np.stack(pts, axis=1), axis=1, kind="stable")[:, :count]
        for name in names:
            values = np.stack([_f64(o[name]) for o in objects], axis=1)
            slots[name] = list(np.take_along_axis(values, order, axis=1).T)
    for name in names:
        slots[name] += [np.full(events, np.nan)] * (max(count, 2) - len(slots[name]))
    return _columns(slots, np.full(events, k, np.int64), count, extras)


def leading_jagged(offsets: np.ndarray, objects: dict[str, np.ndarray], count: int,
                   extras: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """`leading_objects` of a variable number of objects per event: each field a flat array over
    all objects, event j's objects at offsets[j]:offsets[j + 1]."""
    offsets = np.asarray(offsets, np.int64)
    events = len(offsets) - 1
    sizes = np.diff(offsets)
    start = offsets[0]
    pt = np.hypot(_f64(objects["px"]), _f64(objects["py"]))[start:offsets[-1]]
    event = np.repeat(np.arange(events), sizes)
    order = np.lexsort((-pt, event))  # by event, then by descending pt; stable for equal pt
    rank = np.arange(len(order)) - (offsets[event] - start)
    picks = []  # per leading slot: (events that have such an object, where it is)
    for i in range(max(count, 2)):
        at = np.flatnonzero(rank == i)
        picks.append((event[at], order[at] + start))
    slots = {}
    for name in (*CARTESIAN, *extras):
        values = _f64(objects[name])
        slots[name] = []
        for where, source in picks:
            column = np.full(events, np.nan)
            column[where] = values[source]
            slots[name].append(column)
    return _columns(slots, sizes, count, extras)


def _columns(slots: dict[str, list[np.ndarray]], sizes: np.ndarray, count: int,
             extras: tuple[str, ...]) -> dict[str, np.ndarray]:
    columns: dict[str, np.ndarray] = {"count": np.asarray(sizes, np.int64)}
    for i in range(count):
        polar = to_polar(*(slots[c][i] for c in CARTESIAN))
        for name in POLAR:
            columns[f"{i + 1}_{name}"] = polar[name]
        for name in extras:
            columns[f"{i + 1}_{name}"] = slots[name][i]
    if count >= 2:
        pair = {c: slots[c][0] + slots[c][1] for c in CARTESIAN}
        columns["12_mass"] = signed_mass(pair["E"], pair["px"], pair["py"], pair["pz"])
        columns["12_pt"] = np.hypot(pair["px"], pair["py"])
    return columns


def jagged_components(objects: ak.Array, fields: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(offsets, field -> flat numpy values) of a list of records per event (no copy where packed)."""
    import awkward as ak

    layout = ak.to_layout(objects)
    while isinstance(layout, ak.contents.IndexedArray | ak.contents.IndexedOptionArray):
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
    return leading_jagged(offsets, flat, count, extras)


def _f64(values):
    import awkward as ak

    if isinstance(values, ak.Array):
        return ak.values_astype(values, np.float64)
    return np.asarray(values, np.float64)
