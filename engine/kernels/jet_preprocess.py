"""Jet constituents as classifier inputs, preprocessed relative to the jet axis.

Why: a jet's absolute direction (eta, phi) and orientation carry no information about what made
it, but they dominate the raw four-momenta; a DNN on raw inputs wastes its capacity on them (in
the top-tagging comparison a DNN fell from 0.95 to 0.86 AUC without this step). The standard
steps (Kasieczka, Plehn et al.):

1. centre: (deta, dphi) relative to the pT-weighted centroid of the constituents (phi wrapped);
2. rotate: the principal axis of the pT-weighted (deta, dphi) inertia tensor points along deta
   (the sign of the axis is arbitrary and fixed by step 3);
3. flip: the pT-weighted third moments of deta and dphi are made non-negative (the skewed,
   harder side of the jet in the upper right quadrant; the first moments are zero after step 1);
4. normalise pT by the jet's scalar pT sum.

The first N constituents (pT ordered, zero padded) then give 3N features (pt fraction, deta,
dphi). Padding slots stay exactly zero through every step.
"""

from __future__ import annotations

import numpy as np

FEATURES_PER_CONSTITUENT = ("pt_fraction", "deta", "dphi")


def pt_eta_phi(E: np.ndarray, PX: np.ndarray, PY: np.ndarray, PZ: np.ndarray):
    """(pt, eta, phi) of massless-or-not constituents; padding (pt 0) gives (0, 0, 0)."""
    pt = np.hypot(PX, PY)
    present = pt > 0
    safe = np.where(present, pt, 1.0)
    eta = np.where(present, np.arcsinh(PZ / safe), 0.0)
    phi = np.where(present, np.arctan2(PY, PX), 0.0)
    return pt, eta, phi


def jet_axis_frame(pt: np.ndarray, eta: np.ndarray, phi: np.ndarray):
    """(pt fraction, deta, dphi) per constituent after centring, rotating, flipping (rows = jets)."""
    present = pt > 0
    total = pt.sum(-1, keepdims=True)
    w = pt / np.where(total > 0, total, 1.0)
    eta_c = (w * eta).sum(-1, keepdims=True)
    ref = phi[..., :1]  # wrap relative to the leading constituent first, so the mean is not split
    dphi_ref = np.mod(phi - ref + np.pi, 2 * np.pi) - np.pi
    phi_c = (w * dphi_ref).sum(-1, keepdims=True)
    x = np.where(present, eta - eta_c, 0.0)
    y = np.where(present, dphi_ref - phi_c, 0.0)
    sxx, syy, sxy = (w * x * x).sum(-1), (w * y * y).sum(-1), (w * x * y).sum(-1)
    angle = 0.5 * np.arctan2(2 * sxy, sxx - syy)  # principal axis direction
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    u, v = c * x + s * y, -s * x + c * y
    u *= np.where((w * u**3).sum(-1, keepdims=True) < 0, -1.0, 1.0)
    v *= np.where((w * v**3).sum(-1, keepdims=True) < 0, -1.0, 1.0)
    return w, u, v


def constituent_features(E: np.ndarray, PX: np.ndarray, PY: np.ndarray, PZ: np.ndarray,
                         n_constituents: int) -> np.ndarray:
    """(n_jets, 3 * n_constituents) float32 features of the leading constituents in the jet frame.

    Inputs are (n_jets, n_slots) arrays in the reference layout (pT ordered, zero padded). The
    frame is computed from every constituent; the features use the first `n_constituents`.
    """
    if E.ndim != 2 or not (E.shape == PX.shape == PY.shape == PZ.shape):
        raise ValueError(f"E, PX, PY, PZ must be equal 2-D (jet, constituent) arrays, found "
                         f"{E.shape}, {PX.shape}, {PY.shape}, {PZ.shape}")
    if not 1 <= n_constituents <= E.shape[1]:
        raise ValueError(f"n_constituents must lie in [1, {E.shape[1]}], found {n_constituents}")
    # slots that are padding in every jet add nothing to the frame: drop them before the
    # arithmetic (zero padded to 200, real jets use ~40-80 slots: 5x faster)
    occupied = np.flatnonzero((np.asarray(E) != 0).any(0))
    used = max(n_constituents, int(occupied[-1]) + 1 if occupied.size else 0)
    arrays = [np.asarray(a[:, :used], np.float64) for a in (E, PX, PY, PZ)]
    w, u, v = jet_axis_frame(*pt_eta_phi(*arrays))
    k = n_constituents
    return np.stack([w[:, :k], u[:, :k], v[:, :k]], axis=-1).reshape(len(E), 3 * k).astype(np.float32)
