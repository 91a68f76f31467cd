"""Synthetic electromagnetic calorimeter showers with known physics (a stand-in for Geant4).

Why a generator: the CaloChallenge files are not on this machine, and a generative model is only
judged honestly against showers whose distributions are known. Each shower of incident energy E
deposits its energy in `n_layers` layers of a square grid of cells:

- longitudinal: the classic gamma-function profile dE/dt = E b (b t)^(a-1) e^(-b t) / Gamma(a)
  (Longo and Sestili 1975; PDG "Passage of particles through matter", eq. 34.36), t in radiation
  lengths, b = 0.5, shower maximum t_max = (a - 1)/b = ln(E/E_c) - 0.5 (electrons). A layer gets
  the profile integrated over its depth; energy behind the last layer leaks out. Per shower, a
  fluctuates (log-normal, relative width `profile_jitter`): showers start earlier or later.
- lateral: a Gaussian core plus a halo three times wider (a fraction HALO of the layer energy),
  the core width growing with depth relative to the shower maximum, sigma = SIGMA_0 (1 + t/t_max)
  (in cell widths): at a given depth a high-energy shower is narrower. The shower axis enters at a
  random point (Gaussian, IMPACT_SPREAD cells) and runs straight through every layer.
- fluctuations: energy is deposited in quanta of `quantum` GeV; the number of quanta in a cell is
  Poisson with mean (layer energy x cell's share of the lateral profile) / quantum. So the total
  energy has a stochastic resolution sqrt(quantum / E) (10% / sqrt(E / GeV) at 10 MeV quanta) and
  cells are multiples of the quantum, zeros included.

Incident energies are log-uniform in [e_min, e_max] (as in the CaloChallenge). A block of showers
is a function of (seed, block) only, so any block regenerates alone.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammainc, ndtr

B_PARAMETER = 0.5  # the profile's b (per radiation length)
CRITICAL_ENERGY = 0.0073  # GeV: lead (E_c = 7.3 MeV), so t_max ~ 7.6 X0 at 10 GeV
T_MAX_OFFSET = -0.5  # electrons (PDG: -0.5 for electrons, +0.5 for photons)
SIGMA_0 = 0.35  # core width in cell widths at the front face
HALO, HALO_SCALE = 0.2, 3.0  # fraction of energy in the halo, and its width relative to the core
IMPACT_SPREAD = 0.3  # cells: Gaussian spread of the entry point around the grid's centre
DEPTH_X0 = 24.0  # total depth of the layers in radiation lengths


def layer_edges(n_layers: int, depth: float = DEPTH_X0) -> np.ndarray:
    """(n_layers + 1,) layer boundaries in radiation lengths: equal layers over `depth`."""
    return np.linspace(0.0, depth, n_layers + 1)


def cell_centres(n_side: int) -> np.ndarray:
    """(n_side,) cell centre positions along one axis, in cell widths, the grid centred on 0."""
    return np.arange(n_side) - (n_side - 1) / 2


def shape_parameter(energy: np.ndarray) -> np.ndarray:
    """The profile's a for incident energies (GeV): a = 1 + b t_max, t_max = ln(E/E_c) - 0.5."""
    t_max = np.log(np.asarray(energy, float) / CRITICAL_ENERGY) + T_MAX_OFFSET
    return 1.0 + B_PARAMETER * np.maximum(t_max, 0.5)


def expected_layer_fractions(
    energy: np.ndarray, n_layers: int, a_factor: np.ndarray | float = 1.0, depth: float = DEPTH_X0
) -> np.ndarray:
    """(n, n_layers) fractions of the incident energy each layer receives on average (before
    the lateral containment and the quanta): the gamma profile integrated over each layer, for
    profile shape a(E) x a_factor."""
    a = shape_parameter(np.atleast_1d(energy))[:, None] * np.asarray(a_factor, float).reshape(-1, 1)
    cdf = gammainc(a, B_PARAMETER * layer_edges(n_layers, depth)[None, :])
    return np.diff(cdf, axis=1)


def lateral_widths(
    energy: np.ndarray, n_layers: int, a_factor: np.ndarray | float = 1.0, depth: float = DEPTH_X0
) -> np.ndarray:
    """(n, n_layers) core widths (cell widths) at each layer's mid depth: SIGMA_0 (1 + t/t_max)."""
    a = shape_parameter(np.atleast_1d(energy))[:, None] * np.asarray(a_factor, float).reshape(-1, 1)
    t_max = (a - 1.0) / B_PARAMETER
    edges = layer_edges(n_layers, depth)
    middle = (edges[:-1] + edges[1:]) / 2
    return SIGMA_0 * (1.0 + middle[None, :] / t_max)


def _shares(centres: np.ndarray, impact: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """(n, L, n_side) share of a 1-D Gaussian (mean impact (n,), widths (n, L)) in each cell."""
    upper = (centres[None, None, :] + 0.5 - impact[:, None, None]) / sigma[..., None]
    lower = (centres[None, None, :] - 0.5 - impact[:, None, None]) / sigma[..., None]
    return ndtr(upper) - ndtr(lower)


def cell_probabilities(
    sigma: np.ndarray, impact_x: np.ndarray, impact_y: np.ndarray, n_side: int
) -> np.ndarray:
    """(n, L, n_side^2) share of each layer's energy in each cell (row-major y, x): core plus
    halo; what falls outside the grid is lost."""
    centres = cell_centres(n_side)
    out = 0.0
    for weight, scale in ((1.0 - HALO, 1.0), (HALO, HALO_SCALE)):
        sx = _shares(centres, impact_x, sigma * scale)
        sy = _shares(centres, impact_y, sigma * scale)
        out = out + weight * (sy[..., :, None] * sx[..., None, :]).reshape(*sigma.shape, -1)
    return out


def simulate_showers(
    n: int,
    seed: int,
    block: int = 0,
    n_layers: int = 3,
    n_side: int = 6,
    e_min: float = 1.0,
    e_max: float = 100.0,
    quantum: float = 0.01,
    profile_jitter: float = 0.1,
    incident: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """n showers: `energy` (n, n_layers, n_side^2) float32 GeV (multiples of `quantum`) and
    `incident_energy` (n,) float32 GeV, keyed by (seed, block). `incident` fixes the incident
    energies instead of drawing them (the reference for a given set of conditions)."""
    if n < 0 or n_layers < 1 or n_side < 1 or not 0 < e_min <= e_max or quantum <= 0 or profile_jitter < 0:
        raise ValueError(
            f"need n >= 0, n_layers >= 1, n_side >= 1, 0 < e_min <= e_max, quantum > 0, "
            f"profile_jitter >= 0; got {n}, {n_layers}, {n_side}, {e_min}, {e_max}, "
            f"{quantum}, {profile_jitter}"
        )
    rng = np.random.default_rng([seed, block])
    if incident is None:
        e_inc = np.exp(rng.uniform(np.log(e_min), np.log(e_max), n))
    else:
        e_inc = np.asarray(incident, float).reshape(-1)
        if e_inc.size != n or not np.all(e_inc > 0):
            raise ValueError(f"incident energies must be {n} positive values, found {e_inc.size}")
    a_factor = np.exp(profile_jitter * rng.standard_normal(n) - profile_jitter**2 / 2)
    fractions = expected_layer_fractions(e_inc, n_layers, a_factor)
    sigma = lateral_widths(e_inc, n_layers, a_factor)
    impact = IMPACT_SPREAD * rng.standard_normal((2, n))
    probabilities = cell_probabilities(sigma, impact[0], impact[1], n_side)
    mean_quanta = (e_inc[:, None] * fractions)[..., None] * probabilities / quantum
    energy = (rng.poisson(mean_quanta) * quantum).astype(np.float32)
    return {"energy": energy, "incident_energy": e_inc.astype(np.float32)}
