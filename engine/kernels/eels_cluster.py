"""EELS clustering and ZLP training windows: array code for DOMAIN.md section 2, items 3 and 4.

Pixels of similar thickness share ZLP statistics, so the ZLP model is trained per cluster of a
scalar thickness proxy, a log intensity (`cluster_feature`). The clustering is a seeded
mini-batch K-means (Sculley 2010) whose state is only the centroids and per-centroid counts: it
is fed batch by batch (`kmeans_update`), so the data never has to be in memory at once, and it
starts from a K-means++ draw on a sample (`kmeans_init`). Per cluster, a seeded random sample of
spectra (`block_sample` / `merge_samples`: bottom-k by a per-pixel hash, so chunks sample
independently and any merge order gives the same sample) yields the median and P16/P84 of
ln I(E) (`log_quantiles`), from which `zlp_windows` places the fit windows dE_I and dE_II.

numpy only; knows nothing of xarray or dask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import eels as eels_kernels

FEATURES = ("log_peak3", "log_zlp", "log_total")
QUANTILES = (0.16, 0.5, 0.84)


# ---------------------------------------------------------------- the clustering feature


def cluster_feature(spectra, energy, kind: str = "log_peak3") -> np.ndarray:
    """Per-spectrum log intensity (float32, shape spectra[..., 0]); energy on the last axis.

    kind:
      log_peak3  ln of the sum of the 3 channels around each spectrum's ZLP maximum (EELSfitter's
                 choice: the ZLP height falls as e^-t/lambda and needs no integration limit).
                 The maximum is the ZLP's as kernels.eels.zlp_peak_position finds it, within
                 ZLP_SEARCH_EV of 0 eV, never the tallest channel: on a thick pixel with a broad
                 (thermionic) ZLP at coarse dispersion the plasmon is taller, and its height
                 would rank the thickest pixels with the thin ones;
      log_zlp    ln of the ZLP counts up to the first minimum after the peak (kernels.eels);
      log_total  ln of all counts in the window (a thickness proxy only where thick regions
                 scatter out of the spectrometer aperture; at constant beam current it is not).
    Thinner pixels have LARGER values for all three. Spectra whose intensity is not positive
    (noise only) give NaN, and so do spectra without a clear ZLP near 0 eV for log_peak3 and
    log_zlp (kernels.eels._find_zlp: dark, blanked, or too thick for any ZLP). There is no
    fallback to another peak: a plasmon height is not a ZLP height, and K-means would quietly
    file such a pixel with thinner ones. NaN pixels are left out of the K-means fit and labelled
    -1 (kmeans_assign), which also keeps them out of every cluster's ZLP statistics.
    """
    x = np.asarray(spectra)
    x = x.astype(np.result_type(x.dtype, np.float32), copy=False)
    if kind == "log_peak3":
        value = _zlp_peak3(x, energy)
    elif kind == "log_zlp":
        value, _ = eels_kernels.zlp_intensity(x, energy)
    elif kind == "log_total":
        value = x.sum(axis=-1)
    else:
        raise ValueError(f"unknown feature {kind!r}; use one of {', '.join(FEATURES)}")
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log(value)
    return np.where(np.isfinite(out), out, np.nan).astype(np.float32)


def _zlp_peak3(x: np.ndarray, energy) -> np.ndarray:
    """Sum of the 3 channels centred on each spectrum's ZLP maximum; NaN where there is no ZLP.

    The centre is the channel nearest kernels.eels.zlp_peak_position (the same search window,
    prominence test and subpixel top fit as alignment and thickness use): for a clean peak that
    is its maximum channel, and on the flat, noisy top of a thick pixel at fine dispersion it
    is steadier than the raw maximum. Vectorised; one pass of the ZLP search per spectrum.
    """
    n = x.shape[-1]
    e = np.asarray(energy, dtype=np.float64)
    position = eels_kernels.zlp_peak_position(x, e)
    found = np.isfinite(position)
    channel = np.rint((np.where(found, position, e[0]) - e[0]) * ((n - 1) / (e[-1] - e[0])))
    peak = np.clip(channel.astype(np.int64), 1, n - 2)[..., None]
    value = np.take_along_axis(x, peak + np.arange(-1, 2), axis=-1).sum(axis=-1)
    return np.where(found, value, np.nan)


# ---------------------------------------------------------------- mini-batch K-means


@dataclass(frozen=True)
class KMeansState:
    """Everything mini-batch K-means carries between batches: centroids (k, d) and counts (k,)."""

    centroids: np.ndarray
    counts: np.ndarray


def _as_points(points) -> np.ndarray:
    """(n,) or (n, d) features as float64 (n, d): the distances need the precision."""
    p = np.asarray(points, dtype=np.float64)
    return p[:, None] if p.ndim == 1 else p


def _nearest(points: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of and squared distance to the nearest centroid, per point."""
    d2 = ((points[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=-1)
    best = np.argmin(d2, axis=1)
    return best, np.take_along_axis(d2, best[:, None], axis=1)[:, 0]


def kmeans_init(sample, k: int, rng: np.random.Generator) -> KMeansState:
    """K-means++ seeding on a sample: each next centroid drawn with probability ~ D(x)^2.

    Raises ValueError when the sample has fewer than k distinct points (the clusters would be
    duplicates). Counts start at zero, so the first batch a centroid wins replaces it outright.
    """
    points = _as_points(sample)
    if len(np.unique(points, axis=0)) < k:
        raise ValueError(f"cannot make {k} clusters: the feature has fewer than {k} distinct "
                         "finite values; lower n_clusters")
    centroids = [points[rng.integers(len(points))]]
    d2 = ((points - centroids[0]) ** 2).sum(axis=-1)
    for _ in range(1, k):
        chosen = points[rng.choice(len(points), p=d2 / d2.sum())]
        centroids.append(chosen)
        d2 = np.minimum(d2, ((points - chosen) ** 2).sum(axis=-1))
    return KMeansState(np.array(centroids), np.zeros(k))


def kmeans_update(state: KMeansState, batch) -> KMeansState:
    """One mini-batch step: each centroid moves to the running mean of every point it has won.

    Per-centroid learning rate 1/count (Sculley's update, aggregated over the batch), so the
    result after a pass is the mean of the points assigned along the way, and the step size
    shrinks as evidence accumulates. Returns a new state; the input is not modified.
    """
    points = _as_points(batch)
    if points.size == 0:
        return state
    label, _ = _nearest(points, state.centroids)
    k = len(state.counts)
    won = np.bincount(label, minlength=k).astype(np.float64)
    sums = np.zeros_like(state.centroids)
    np.add.at(sums, label, points)
    counts = state.counts + won
    moved = won > 0
    centroids = state.centroids.copy()
    centroids[moved] += (sums[moved] - won[moved, None] * centroids[moved]) / counts[moved, None]
    return KMeansState(centroids, counts)


def kmeans_assign(features, centroids) -> np.ndarray:
    """Label (int32) of the nearest centroid for scalar features of any shape; NaN gives -1."""
    f = np.asarray(features, dtype=np.float64)
    c = np.asarray(centroids, dtype=np.float64).reshape(-1)
    finite = np.isfinite(f)
    label, _ = _nearest(np.where(finite, f, 0.0).reshape(-1, 1), c[:, None])
    return np.where(finite, label.reshape(f.shape), -1).astype(np.int32)


def _lloyd(state: KMeansState, points: np.ndarray, iterations: int) -> tuple[KMeansState, float]:
    """Full K-means (Lloyd) steps on a small in-memory sample; returns the state and its inertia.

    A centroid that wins no point keeps its place. Inertia is the sum of squared distances to
    the nearest centroid, the quantity K-means minimises.
    """
    centroids = state.centroids.copy()
    for _ in range(iterations):
        label, _ = _nearest(points, centroids)
        won = np.bincount(label, minlength=len(centroids))
        sums = np.zeros_like(centroids)
        np.add.at(sums, label, points)
        centroids[won > 0] = sums[won > 0] / won[won > 0, None]
    return KMeansState(centroids, state.counts), float(_nearest(points, centroids)[1].sum())


def fit_kmeans(features, k: int, seed: int, batch_size: int = 4096, epochs: int = 3,
               init_size: int = 10_000, n_init: int = 8) -> np.ndarray:
    """Centroids (k,) of scalar features, sorted DESCENDING so cluster 0 is the thinnest.

    Finite features only. Start: n_init K-means++ draws on a seeded sample of init_size
    points, each polished by Lloyd steps on that sample, keeping the lowest inertia: one
    K-means++ draw on 8 equal, well separated clusters lands two centroids in one cluster
    about half the time, and mini-batch updates never move a centroid across a gap. Then
    `epochs` passes of mini-batches of batch_size in a seeded random order over all points:
    batches must be random, because consecutive pixels of an image are one flake and
    contiguous batches would drag every centroid to it in turn. Same inputs and seed, same
    centroids.
    """
    f = np.asarray(features, dtype=np.float64).reshape(-1)
    f = f[np.isfinite(f)]
    if f.size < k:
        raise ValueError(f"cannot make {k} clusters from {f.size} pixels with a finite feature")
    rng = np.random.default_rng(seed)
    sample = _as_points(f[rng.choice(f.size, min(init_size, f.size), replace=False)])
    starts = [_lloyd(kmeans_init(sample, k, rng), sample, 20) for _ in range(n_init)]
    state = min(starts, key=lambda start: start[1])[0]
    for _ in range(epochs):
        order = rng.permutation(f.size)
        for lo in range(0, f.size, batch_size):
            state = kmeans_update(state, f[order[lo:lo + batch_size]])
    return np.sort(state.centroids[:, 0])[::-1].copy()


# ---------------------------------------------------------------- per-cluster spectra sample


def pixel_keys(flat_index, seed: int) -> np.ndarray:
    """A uniform [0, 1) key per global pixel index (splitmix64 of seed and index).

    Sampling by "the n smallest keys of each cluster" is a uniform sample without replacement
    that every chunk can take alone: the key depends on the pixel, never on the chunking.
    """
    z = np.asarray(flat_index, dtype=np.uint64) + np.uint64(seed * 0x9E3779B97F4A7C15 % 2**64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


@dataclass(frozen=True)
class Sample:
    """Up to n spectra per cluster (the smallest keys seen so far) and every cluster's size."""

    keys: np.ndarray  # (m,)
    labels: np.ndarray  # (m,)
    spectra: np.ndarray  # (m, E)
    n_pixels: np.ndarray  # (k,) pixels per cluster in everything merged so far


def _bottom(keys, labels, spectra, n_pixels, n_sample: int) -> Sample:
    """Keep the n_sample smallest keys of each label."""
    order = np.lexsort((keys, labels))
    sorted_labels = labels[order]
    first = np.searchsorted(sorted_labels, sorted_labels, side="left")
    keep = order[np.arange(order.size) - first < n_sample]
    return Sample(keys[keep], labels[keep], spectra[keep], n_pixels)


def block_sample(spectra, labels, flat_index, k: int, n_sample: int, seed: int) -> Sample:
    """The sample of one block: spectra (..., E), labels and global flat pixel indices (...)."""
    x = np.asarray(spectra)
    lab = np.asarray(labels).reshape(-1)
    idx = np.asarray(flat_index).reshape(-1)
    inside = (lab >= 0) & (lab < k)
    n_pixels = np.bincount(lab[inside], minlength=k)
    return _bottom(pixel_keys(idx[inside], seed), lab[inside],
                   x.reshape(lab.size, x.shape[-1])[inside], n_pixels, n_sample)


def merge_samples(samples: list[Sample], n_sample: int) -> Sample:
    """One sample from several; associative, so a tree of merges equals one big merge."""
    return _bottom(np.concatenate([s.keys for s in samples]),
                   np.concatenate([s.labels for s in samples]),
                   np.concatenate([s.spectra for s in samples]),
                   sum(s.n_pixels for s in samples), n_sample)


def log_quantiles(sample: Sample, k: int) -> np.ndarray:
    """(k, 3, E) float64: ln of the P16, median and P84 over each cluster's sampled spectra.

    Quantiles are taken of the counts and then logged: ln is monotone, so this equals the
    quantiles of ln I wherever the counts are positive, and a channel whose quantile is not
    positive (noise around zero far from the peak) gets NaN rather than a made-up log.
    Empty clusters are all NaN.
    """
    out = np.full((k, len(QUANTILES), sample.spectra.shape[-1]), np.nan)
    for c in range(k):
        rows = sample.spectra[sample.labels == c]
        if len(rows):
            q = np.quantile(rows.astype(np.float64), QUANTILES, axis=0)
            with np.errstate(divide="ignore", invalid="ignore"):
                out[c] = np.where(q > 0, np.log(q), np.nan)
    return out


# ---------------------------------------------------------------- training windows


@dataclass(frozen=True)
class Windows:
    """Fit windows of one cluster (eV) and the two landmarks they were derived from."""

    de_i: float
    de_ii: float
    steepest: float
    first_minimum: float


def _boxcar(y: np.ndarray, h: int) -> np.ndarray:
    """Centred (2h+1)-channel running mean; the window shrinks symmetrically at the ends."""
    c = np.concatenate([[0.0], np.cumsum(y)])
    i = np.arange(y.size)
    r = np.minimum(np.minimum(i, y.size - 1 - i), h)
    return (c[i + r + 1] - c[i - r]) / (2 * r + 1)


def zlp_windows(energy, log_median, de_i: float | None = None) -> Windows:
    """dE_I and dE_II of one cluster from its median ln I(E), the ZLP at 0 eV (aligned data).

    Exact definitions, on the loss side of the peak p (argmax of the median):
      * the curve is the median ln I from p up to the last finite channel, smoothed by a
        centred boxcar of 2 (h // 2) + 1 channels, h = the loss-side half width at half
        maximum in channels: about one HWHM of smoothing whatever the dispersion (a median of
        hundreds of spectra needs little; a wider boxcar shifts the steepest descent);
      * first minimum m: the first channel at least h past p where the smoothed slope
        (np.gradient) is >= 0 or, if earlier, where the smoothed curve has fallen to one count
        (ln I <= 0: a pure ZLP, e.g. vacuum, only falls and its tail below one count is noise);
        the last finite channel when neither happens;
      * steepest descent s: the channel of most negative smoothed slope in [p, m];
      * dE_I: the point of maximum curvature of the smoothed curve on [s, m], located as the
        knee (Satopaa et al. 2011): the channel farthest below the chord from (E_s, y_s) to
        (E_m, y_m). Unlike the raw second derivative it is insensitive to channel noise and
        to the sharp rise of an onset just at m;
      * dE_II: where the exponential I = exp(a + b E) through (E_s, y_s) and (dE_I, y_I)
        (a straight line in ln I: the ZLP tail extrapolated from where it dominates) falls to
        one count, ln I = 0: dE_II = dE_I - y_I / b.
    A given de_i (a recipe's override) replaces the knee, at its nearest channel, and dE_II is
    placed from it by the same rule.
    Raises ValueError when no such window exists (no loss side, or the curve at dE_I is
    already at or below one count); a recipe can then set the window by hand.
    """
    e = np.asarray(energy, dtype=np.float64)
    y = np.asarray(log_median, dtype=np.float64)
    if not np.isfinite(y).any():
        raise ValueError("the median spectrum has no positive counts")
    p = int(np.nanargmax(y))
    bad = np.flatnonzero(~np.isfinite(y[p:]))
    end = p + (int(bad[0]) if bad.size else y.size - p)  # one past the last finite channel
    below_half = np.flatnonzero(y[p:end] < y[p] - np.log(2.0))
    if end - p < 4 or below_half.size == 0:
        raise ValueError(f"the median spectrum does not fall to half its maximum after the peak "
                         f"at {e[p]:.3g} eV: no loss-side ZLP tail to place dE_I on")
    h = int(below_half[0])
    ys = _boxcar(y[p:end], max(h // 2, 1))
    slope = np.gradient(ys, e[p:end])
    rising = np.flatnonzero((slope[h:] >= 0) | (ys[h:] <= 0))
    m = h + int(rising[0]) if rising.size else end - p - 1
    s = int(np.argmin(slope[: m + 1]))
    if de_i is not None:
        knee = int(np.argmin(np.abs(e[p:end] - de_i)))
    elif m - s >= 2:
        chord = ys[s] + (ys[m] - ys[s]) * (e[p + s:p + m + 1] - e[p + s]) / (e[p + m] - e[p + s])
        knee = s + int(np.argmax(chord - ys[s:m + 1]))
    else:
        knee = m
    de_i = float(e[p + knee]) if de_i is None else float(de_i)
    b = (ys[knee] - ys[s]) / (e[p + knee] - e[p + s]) if knee > s else slope[s]
    if not (b < 0 and ys[knee] > 0):
        raise ValueError(f"cannot place dE_II: at dE_I = {de_i:.3g} eV the median ln I is "
                         f"{ys[knee]:.3g} with slope {b:.3g}/eV, so no exponential through it "
                         "falls to one count beyond it; set de_ii by hand")
    return Windows(de_i, de_i - float(ys[knee]) / b, float(e[p + s]), float(e[p + m]))


# The power law is fitted on [dE_I / TAIL_SPAN, dE_I]: a Pearson VII tail steepens towards its
# asymptote E^-2m, so the local slope just below dE_I extrapolates best. Measured on the flakes
# image (seed 11, thinnest cluster, exact one-count point 6.3-6.4 eV): the whole span from the
# steepest descent gave 8.7 eV, this span 6.9 eV.
TAIL_SPAN = 1.5


def one_count_energy(energy, log_median, windows: Windows) -> tuple[float, str]:
    """Where a cluster's median ZLP falls to one count: dE_II from the vacuum (issue 17).

    For vacuum (pure ZLP) the smoothed median ln I itself reaches 0 (one count) after the
    peak, or the median count itself reaches 0 (NaN: noise about a subtracted background):
    the first such channel (smoothing as in zlp_windows). A specimen's median never does
    (its inelastic signal rises), so for the thinnest specimen cluster the ZLP tail is
    extrapolated as a power law I ~ E^-p fitted in ln I vs ln E on [dE_I / TAIL_SPAN, dE_I]
    (the shape of a real ZLP tail: Pearson VII, p ~ 3.8), never past the data; the last
    channel when it does not fall. Returns (energy in eV, "measured" | "power law" | "window end").
    """
    e = np.asarray(energy, dtype=np.float64)
    y = np.asarray(log_median, dtype=np.float64)
    p = int(np.nanargmax(y))
    bad = np.flatnonzero(~np.isfinite(y[p:]))
    end = p + (int(bad[0]) if bad.size else y.size - p)
    below_half = np.flatnonzero(y[p:end] < y[p] - np.log(2.0))
    h = int(below_half[0]) if below_half.size else 1
    ys = _boxcar(y[p:end], max(h // 2, 1))
    fallen = np.flatnonzero(ys <= 0)
    if bad.size and not fallen.size and e[end] < e[-1] - eels_kernels.ZLP_SEARCH_EV:
        # NaN: a median count <= 0, where a background-subtracted tail meets its noise floor
        # (the real WS2 vacuum: 11.8 eV). Not within the last ZLP_SEARCH_EV of the window:
        # alignment shifts spectra by up to that and leaves the window's edge empty.
        fallen = np.array([end - p])
    if fallen.size:
        return float(e[min(p + int(fallen[0]), e.size - 1)]), "measured"
    tail = (e[p:end] >= max(windows.steepest, windows.de_i / TAIL_SPAN)) & (e[p:end] <= windows.de_i)
    if tail.sum() >= 3:
        slope, offset = np.polyfit(np.log(e[p:end][tail]), ys[tail], 1)
        if slope < 0:
            return float(min(np.exp(-offset / slope), e[-1])), "power law"
    return float(e[-1]), "window end"
