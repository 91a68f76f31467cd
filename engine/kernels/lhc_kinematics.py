"""Four-vector kinematics of collider objects: pt, eta, phi, mass and pair invariant masses.

Pure functions on numpy or awkward arrays (numpy ufuncs broadcast through awkward's lists), so
the same code serves flat columns (muon 1, muon 2) and jagged collections (all muons of an
event). Everything is computed in float64: E^2 - p^2 of a 40 GeV muon cancels to 1e-5 of its
terms, which float32 would turn into noise. The mass of a vector with E^2 < p^2 (resolution)
is -sqrt(p^2 - E^2), the ROOT TLorentzVector convention, so such events stay visible.
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


def leading_objects(objects: ak.Array, count: int, extras: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Per-event columns of the `count` highest-pt objects and of the pair of the first two.

    `objects` is a list of records per event with fields px, py, pz, E (plus `extras`, such as
    a charge, copied for each leading object). Returns `{i}_pt`, `{i}_eta`, `{i}_phi`,
    `{i}_mass`, `{i}_<extra>` for i = 1..count (NaN where an event has fewer objects),
    `count`, and with count >= 2 `12_mass` and `12_pt` of the two leading objects together.
    """
    import awkward as ak

    polar = to_polar(*(objects[c] for c in CARTESIAN))
    order = ak.argsort(polar["pt"], axis=1, ascending=False, stable=True)
    columns: dict[str, np.ndarray] = {"count": ak.to_numpy(ak.num(objects, axis=1)).astype(np.int64)}
    fields = {**polar, **{name: objects[name] for name in (*CARTESIAN, *extras)}}
    leading = {name: ak.pad_none(values[order], max(count, 2), axis=1, clip=True)
               for name, values in fields.items()}
    for i in range(count):
        for name in (*POLAR, *extras):
            columns[f"{i + 1}_{name}"] = _column(leading[name][:, i])
    if count >= 2:
        pair = {c: _column(leading[c][:, 0]) + _column(leading[c][:, 1]) for c in CARTESIAN}
        columns["12_mass"] = signed_mass(pair["E"], pair["px"], pair["py"], pair["pz"])
        columns["12_pt"] = np.hypot(pair["px"], pair["py"])
    return columns


def _column(values: ak.Array) -> np.ndarray:
    import awkward as ak

    return ak.to_numpy(ak.fill_none(ak.values_astype(values, np.float64), np.nan))


def _f64(values):
    import awkward as ak

    if isinstance(values, ak.Array):
        return ak.values_astype(values, np.float64)
    return np.asarray(values, np.float64)
