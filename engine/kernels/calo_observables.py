"""What generated calorimeter showers are judged by: physics observables and classifier inputs.

The CaloChallenge's (Krause et al., arXiv:2410.21611) high-level observables, per shower: the
total deposited energy over the incident energy, each layer's energy fraction, and per layer the
energy-weighted centroid and width in x and the sparsity (fraction of cells with energy). Their
one-dimensional distributions are compared with the 1-Wasserstein distance (no binning choices);
histograms on the reference's quantiles are kept for pictures. Classifier inputs are the
challenge's low-level ones: every cell's energy over the incident energy, plus log E_inc.
No torch here.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import wasserstein_distance


def observable_names(n_layers: int) -> list[str]:
    names = ["total_fraction"] + [f"layer{k}_fraction" for k in range(n_layers)]
    for k in range(n_layers):
        names += [f"layer{k}_centroid_x", f"layer{k}_width_x", f"layer{k}_sparsity"]
    return names


def shower_observables(energy: np.ndarray, incident: np.ndarray, cell_x: np.ndarray) -> np.ndarray:
    """(n, n_observables) in `observable_names` order; an empty layer has centroid and width 0."""
    energy = np.asarray(energy, np.float64)
    incident = np.asarray(incident, np.float64).reshape(-1)
    if energy.ndim != 3 or energy.shape[0] != incident.size or energy.shape[2] != np.size(cell_x):
        raise ValueError(
            f"showers (shower, layer, cell) must match {incident.size} incident energies "
            f"and {np.size(cell_x)} cell positions, found {energy.shape}"
        )
    layers = energy.sum(-1)
    safe = np.where(layers > 0, layers, 1.0)
    x = np.asarray(cell_x, np.float64)
    centroid = (energy * x).sum(-1) / safe
    width = np.sqrt(np.maximum((energy * x**2).sum(-1) / safe - centroid**2, 0))
    sparsity = (energy > 0).mean(-1)
    columns = [layers.sum(-1) / incident] + [layers[:, k] / incident for k in range(layers.shape[1])]
    for k in range(layers.shape[1]):
        columns += [centroid[:, k], width[:, k], sparsity[:, k]]
    return np.stack(columns, axis=1)


def classifier_features(energy: np.ndarray, incident: np.ndarray) -> np.ndarray:
    """(n, L x C + 1) float32: cell energies over the incident energy, and log E_inc."""
    energy = np.asarray(energy, np.float64)
    incident = np.asarray(incident, np.float64).reshape(-1)
    cells = energy.reshape(len(incident), -1) / incident[:, None]
    return np.concatenate([cells, np.log(incident)[:, None]], axis=1).astype(np.float32)


def wasserstein_table(generated: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per observable: W1(generated, reference) in units of the reference's std, and the same
    distance between the two halves of the reference (the floor a perfect generator reaches at
    this sample size, up to a factor ~sqrt(2) for half-size samples)."""
    half = len(reference) // 2
    distance, floor = [], []
    for k in range(reference.shape[1]):
        scale = reference[:, k].std() or 1.0
        distance.append(wasserstein_distance(generated[:, k], reference[:, k]) / scale)
        floor.append(wasserstein_distance(reference[:half, k], reference[half:, k]) / scale)
    return np.array(distance), np.array(floor)


def histograms(generated: np.ndarray, reference: np.ndarray, bins: int) -> tuple[np.ndarray, ...]:
    """Per observable, densities of both samples on `bins` bins spanning the reference's 0.5-99.5%
    quantiles: (generated (k, bins), reference (k, bins), edges (k, bins + 1))."""
    k = reference.shape[1]
    edges = np.empty((k, bins + 1))
    gen, ref = np.empty((k, bins)), np.empty((k, bins))
    for j in range(k):
        low, high = np.quantile(reference[:, j], [0.005, 0.995])
        if not high > low:
            low, high = low - 0.5, high + 0.5
        edges[j] = np.linspace(low, high, bins + 1)
        gen[j] = np.histogram(generated[:, j], edges[j], density=True)[0]
        ref[j] = np.histogram(reference[:, j], edges[j], density=True)[0]
    return gen, ref, edges
