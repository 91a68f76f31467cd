"""Synthetic stand-in for the top-tagging reference dataset: QCD-like and top-like jets.

Why a generator: the reference files (1.2 M jets) are not on this machine, and tests need jets
whose truth is known. Each jet is a set of massless constituents around a few hard prongs:

- top-like (signal): a top quark of mass ~175 GeV (Breit-Wigner, width 1.4 GeV) decays
  t -> W b, W -> q q' isotropically in the rest frames; the three quarks are boosted to the lab
  (jet pT 550-650 GeV, like the reference sample), so the jet has three hard prongs and m ~ 175.
- QCD-like (background): one hard parton plus one soft, collinear emission (z log-uniform in
  [0.01, 0.5], angle from a falling virtuality spectrum), so one prong dominates and m is small.

Each prong fragments into a handful of constituents with Dirichlet-distributed momentum fractions
(a few hard, many soft) spread around the prong direction, softer ones wider. Everything is
vectorised over jets; a block of jets is a function of (seed, block index) only, so any block
regenerates alone and a file is written block by block in bounded memory.
"""

from __future__ import annotations

import numpy as np

TOP_MASS, TOP_WIDTH, W_MASS, B_MASS = 175.0, 1.4, 80.4, 4.8
PT_RANGE = (550.0, 650.0)
N_CONSTITUENTS = 200
MAX_PER_PRONG = 40
COLUMNS = ("E", "PX", "PY", "PZ")
LABEL = "is_signal_new"


def _unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    """n isotropic unit 3-vectors."""
    cos = rng.uniform(-1, 1, n)
    phi = rng.uniform(-np.pi, np.pi, n)
    sin = np.sqrt(1 - cos**2)
    return np.stack([sin * np.cos(phi), sin * np.sin(phi), cos], axis=-1)


def _two_body(mass: np.ndarray, m1: np.ndarray, m2: np.ndarray, direction: np.ndarray):
    """Four-momenta (E, px, py, pz) of a two-body decay at rest, daughter 1 along `direction`."""
    p = np.sqrt(np.maximum((mass**2 - (m1 + m2) ** 2) * (mass**2 - (m1 - m2) ** 2), 0)) / (2 * mass)
    p1 = p[:, None] * direction
    first = np.concatenate([np.sqrt(p**2 + m1**2)[:, None], p1], axis=-1)
    second = np.concatenate([np.sqrt(p**2 + m2**2)[:, None], -p1], axis=-1)
    return first, second


def _boost(four: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """Boost four-momenta from the rest frame of `parent` (E, p) into the frame where it has p."""
    mass = np.sqrt(np.maximum(parent[:, 0] ** 2 - (parent[:, 1:] ** 2).sum(-1), 1e-12))
    beta = parent[:, 1:] / parent[:, :1]
    gamma = parent[:, 0] / mass
    b2 = (beta**2).sum(-1)
    bp = (beta * four[:, 1:]).sum(-1)
    factor = np.where(b2 > 0, (gamma - 1) * bp / np.where(b2 > 0, b2, 1), 0)
    energy = gamma * (four[:, 0] + bp)
    momentum = four[:, 1:] + (factor + gamma * four[:, 0])[:, None] * beta
    return np.concatenate([energy[:, None], momentum], axis=-1)


def _to_pt_eta_phi(four: np.ndarray) -> np.ndarray:
    px, py, pz = four[..., 1], four[..., 2], four[..., 3]
    pt = np.hypot(px, py)
    return np.stack([pt, np.arcsinh(pz / np.maximum(pt, 1e-12)), np.arctan2(py, px)], axis=-1)


def _top_prongs(rng: np.random.Generator, n: int, pt: np.ndarray, eta: np.ndarray,
                phi: np.ndarray) -> np.ndarray:
    """(n, 3, 3) prongs (pt, eta, phi) of t -> b q q' for tops with the given lab kinematics."""
    mass = np.clip(TOP_MASS + TOP_WIDTH * np.tan(np.pi * (rng.uniform(size=n) - 0.5)), 150, 200)
    w_mass = np.clip(W_MASS + 1.0 * np.tan(np.pi * (rng.uniform(size=n) - 0.5)), 60, 100)
    w_mass = np.minimum(w_mass, mass - B_MASS - 1)
    w, b = _two_body(mass, w_mass, np.full(n, B_MASS), _unit_vectors(rng, n))
    q1, q2 = _two_body(w_mass, np.zeros(n), np.zeros(n), _unit_vectors(rng, n))
    q1, q2 = _boost(q1, w), _boost(q2, w)
    top = np.stack([np.sqrt((pt * np.cosh(eta)) ** 2 + mass**2), pt * np.cos(phi), pt * np.sin(phi),
                    pt * np.sinh(eta)], axis=-1)
    return np.stack([_to_pt_eta_phi(_boost(part, top)) for part in (b, q1, q2)], axis=1)


def _qcd_prongs(rng: np.random.Generator, n: int, pt: np.ndarray, eta: np.ndarray,
                phi: np.ndarray) -> np.ndarray:
    """(n, 3, 3) prongs: a hard parton, one soft collinear emission, and an empty third prong."""
    z = np.exp(rng.uniform(np.log(0.01), np.log(0.5), n))
    virtuality = 20.0 + rng.exponential(90.0, n)
    theta = np.minimum(virtuality / (pt * np.sqrt(z * (1 - z))), 0.7)
    angle = rng.uniform(-np.pi, np.pi, n)
    hard = np.stack([(1 - z) * pt, eta - z * theta * np.cos(angle), phi - z * theta * np.sin(angle)], -1)
    soft = np.stack([z * pt, eta + (1 - z) * theta * np.cos(angle),
                     phi + (1 - z) * theta * np.sin(angle)], -1)
    return np.stack([hard, soft, np.zeros((n, 3))], axis=1)


def _fragment(rng: np.random.Generator, prongs: np.ndarray) -> np.ndarray:
    """(n, P*K, 3) constituents (pt, eta, phi) from (n, P, 3) prongs; empty slots have pt 0."""
    n, n_prongs, _ = prongs.shape
    pt = prongs[..., 0]
    counts = np.where(pt > 0, np.clip(3 + rng.poisson(np.sqrt(np.maximum(pt, 0)) * 0.8), 1,
                                      MAX_PER_PRONG), 0)
    slots = np.arange(MAX_PER_PRONG)
    shares = rng.gamma(0.4, 1.0, (n, n_prongs, MAX_PER_PRONG)) * (slots < counts[..., None])
    shares /= np.maximum(shares.sum(-1, keepdims=True), 1e-12)
    width = 0.02 / np.sqrt(np.maximum(shares, 1e-3))
    width = np.minimum(width, 0.15)
    parts = np.empty((n, n_prongs, MAX_PER_PRONG, 3))
    parts[..., 0] = shares * pt[..., None]
    parts[..., 1] = prongs[..., 1:2] + width * rng.standard_normal(shares.shape)
    parts[..., 2] = prongs[..., 2:3] + width * rng.standard_normal(shares.shape)
    return parts.reshape(n, n_prongs * MAX_PER_PRONG, 3)


def simulate_jets(n: int, seed: int, block: int = 0, signal_fraction: float = 0.5,
                  n_constituents: int = N_CONSTITUENTS) -> dict[str, np.ndarray]:
    """n jets as the reference layout's arrays: E, PX, PY, PZ (n, n_constituents) float32,
    zero padded and pT ordered, plus `label` (n,) int8 (1 = top). Keyed by (seed, block)."""
    if n < 0 or not 0 <= signal_fraction <= 1 or n_constituents < 1:
        raise ValueError(f"need n >= 0, signal_fraction in [0, 1], n_constituents >= 1; got "
                         f"{n}, {signal_fraction}, {n_constituents}")
    rng = np.random.default_rng([seed, block])
    label = (rng.uniform(size=n) < signal_fraction).astype(np.int8)
    pt = rng.uniform(*PT_RANGE, n)
    eta = rng.uniform(-2.0, 2.0, n)
    phi = rng.uniform(-np.pi, np.pi, n)
    prongs = np.where(label[:, None, None] == 1, _top_prongs(rng, n, pt, eta, phi),
                      _qcd_prongs(rng, n, pt, eta, phi))
    parts = _fragment(rng, prongs)
    order = np.argsort(-parts[..., 0], axis=1, kind="stable")[:, :n_constituents]
    parts = np.take_along_axis(parts, order[..., None], axis=1)
    if parts.shape[1] < n_constituents:
        parts = np.pad(parts, ((0, 0), (0, n_constituents - parts.shape[1]), (0, 0)))
    cpt, ceta, cphi = parts[..., 0], parts[..., 1], parts[..., 2]
    present = cpt > 0
    arrays = {"E": cpt * np.cosh(ceta), "PX": cpt * np.cos(cphi), "PY": cpt * np.sin(cphi),
              "PZ": cpt * np.sinh(ceta)}
    out = {k: np.where(present, v, 0).astype(np.float32) for k, v in arrays.items()}
    out["label"] = label
    return out


def jet_mass(E: np.ndarray, PX: np.ndarray, PY: np.ndarray, PZ: np.ndarray) -> np.ndarray:
    """Invariant mass of the sum of each jet's constituents (rows)."""
    m2 = E.sum(-1, dtype=float) ** 2 - sum(p.sum(-1, dtype=float) ** 2 for p in (PX, PY, PZ))
    return np.sqrt(np.maximum(m2, 0))
