"""EELS clustering and ZLP training windows (DOMAIN.md section 2, items 3 and 4), lazily.

`eels.cluster` reduces each spectrum to one scalar feature (a log intensity, a 2-D map of
4 MB at 10^6 pixels) chunk by chunk, fits a seeded mini-batch K-means on that map in a single
dask task, and labels every pixel by its nearest centroid. Only the small feature map is ever
in memory at once; the image streams through chunk by chunk, which is what out-of-core needs.

`eels.zlp_windows` summarises each cluster by the median and P16/P84 of ln I(E) over a seeded
random sample of its spectra, and places the ZLP fit windows dE_I and dE_II on the median.
Medians do not combine across chunks, so each chunk keeps only its candidate sample (the
spectra with the smallest per-pixel hash keys of each cluster, kernels.eels_cluster) and a tree
of merges keeps the smallest keys overall: a uniform sample without replacement of up to
n_sample spectra per cluster, independent of the chunking, in memory bounded by k x n_sample
spectra. Nothing here computes: the results are lazy datasets.
"""

from __future__ import annotations

from typing import Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr
from pydantic import Field

from ..bounds import Clusters, Epochs, Repeats, Sample, Seed, Spectra
from ..bounds import Params as _Params
from ..errors import OpError
from ..kernels import eels_cluster as kernels
from ..registry import register_op
from . import needs
from .core import as_delayed, require_dims, require_variables, second_pass
from .eels import ENERGY, energy_axis, spectra_of

CLUSTER = "cluster"  # the label map (pixel dims)
CLUSTER_ID = "cluster_id"  # the dim of per-cluster results; xarray cannot name both "cluster"
_MERGE_FAN_IN = 8  # samples merged per task: a shallow tree, few spectra in memory per merge


class ClusterParams(_Params):
    n_clusters: Clusters = Field(5, ge=1, description="number of clusters K")
    seed: Seed = Field(0, description="seed of the K-means initialisation and batch order")
    feature: Literal["log_peak3", "log_zlp", "log_total"] = Field(
        "log_peak3", description="log intensity to cluster on: 3 channels around the ZLP "
        "maximum near 0 eV (EELSfitter), the ZLP up to its first minimum, or the whole window")
    batch_size: Sample = Field(4096, ge=1, description="pixels per mini-batch")
    epochs: Epochs = Field(3, ge=1, description="mini-batch passes over all pixels")
    init_size: Sample = Field(10_000, ge=1, description="pixels sampled for the K-means++ start")
    n_init: Repeats = Field(8, ge=1, description="K-means++ starts tried; the best one is kept")
    variable: str = Field("counts", description="spectra variable")


def _pixel_dims(spectra: xr.DataArray) -> tuple[str, ...]:
    return tuple(str(d) for d in spectra.dims[:-1])


@register_op("eels.cluster", params=ClusterParams, inputs=("image",),
             memory=needs.cluster_need)
def cluster(params: ClusterParams, image: xr.Dataset) -> xr.Dataset:
    """K-means of pixels on a log-intensity feature: thickness classes sharing ZLP statistics.

    Output: `cluster` (pixel dims, int32; -1 where the feature is not finite), `feature` (the
    log intensity clustered on), `centroid` (cluster_id) and `n_unlabelled` (pixels labelled -1).
    Centroids are sorted descending, so cluster 0 is the thinnest (largest ZLP intensity) and
    labels do not depend on the run. log_peak3 and log_zlp are NaN for a spectrum without a
    clear ZLP near 0 eV (kernels.eels_cluster.cluster_feature; e.g. too thick, dark or blanked):
    such pixels stay out of the K-means fit and of eels.zlp_windows' statistics, and are counted
    rather than filed with a cluster by another peak's height.
    """
    spectra = spectra_of(image, params.variable)
    energy = energy_axis(image)
    n_pixels = int(np.prod([spectra.sizes[d] for d in _pixel_dims(spectra)]))
    if params.n_clusters > n_pixels:
        raise OpError(f"n_clusters={params.n_clusters} is more than the {n_pixels} pixels of the "
                      "image; lower n_clusters")
    feature = xr.apply_ufunc(
        kernels.cluster_feature, spectra, kwargs={"energy": energy, "kind": params.feature},
        input_core_dims=[[ENERGY]], dask="parallelized", output_dtypes=[np.float32],
    )
    if feature.chunks is None:
        feature = feature.chunk()
    fitted = dask.delayed(kernels.fit_kmeans, pure=True)(
        as_delayed(feature.data), params.n_clusters, params.seed, params.batch_size, params.epochs,
        params.init_size, params.n_init)
    centroid = xr.DataArray(da.from_delayed(fitted, (params.n_clusters,), dtype=np.float64),
                            dims=(CLUSTER_ID,), coords={CLUSTER_ID: np.arange(params.n_clusters)})
    labels = xr.apply_ufunc(
        kernels.kmeans_assign, feature, centroid, input_core_dims=[[], [CLUSTER_ID]],
        dask="parallelized", output_dtypes=[np.int32],
    )
    feature.attrs = {"units": "1", "long_name": f"clustering feature ({params.feature})"}
    labels.attrs = {"long_name": "cluster label (0 = thinnest, -1 = no finite feature)"}
    centroid.attrs = {"units": "1", "long_name": "cluster centroid of the feature"}
    unlabelled = (labels < 0).sum().astype(np.int64)
    unlabelled.attrs = {"long_name": "pixels without a finite feature (label -1; for log_peak3 "
                        "and log_zlp: no ZLP found near 0 eV)"}
    return xr.Dataset({CLUSTER: labels, "feature": feature, "centroid": centroid,
                       "n_unlabelled": unlabelled}, attrs=dict(image.attrs))


class WindowParams(_Params):
    variable: str = Field("counts", description="spectra variable (aligned: ZLP at 0 eV)")
    n_sample: Spectra = Field(500, ge=1, description="spectra sampled per cluster for the quantiles")
    seed: Seed = Field(0, description="seed of the per-cluster spectra sample")
    min_pixels: Sample = Field(10, ge=1, description="fewest pixels a cluster may have")
    on_too_few: Literal["error", "flag"] = Field(
        "error", description="a cluster below min_pixels fails the run, or is only flagged in "
        "`enough_pixels`")
    de_i: list[float | None] | None = Field(
        None, description="dE_I per cluster in eV (null entries: automatic)")
    de_ii: list[float | None] | None = Field(
        None, description="dE_II per cluster in eV (null entries: automatic, see de_ii_rule)")
    de_ii_rule: Literal["vacuum", "knee"] = Field(
        "vacuum", description="automatic dE_II, one value for the whole cluster set: where the "
        "vacuum_cluster's median ZLP falls to one count (measured on vacuum, a power-law tail "
        "extrapolated on a specimen); knee: per cluster, where an exponential through its knee "
        "falls to one count (falls far too early under a Pearson-like tail)")
    vacuum_cluster: Clusters = Field(
        0, ge=0, description="the vacuum (or else thinnest) cluster: 0, as clusters run thin to "
        "thick")


def _overrides(values: list[float | None] | None, name: str, k: int,
               energy: np.ndarray) -> list[float | None]:
    """One override per cluster (None = automatic), each inside the loss side of the data."""
    if values is None:
        return [None] * k
    if len(values) != k:
        raise OpError(f"{name} has {len(values)} values but the clusters input has {k} clusters; "
                      "give one per cluster (null for automatic)")
    for c, value in enumerate(values):
        if value is not None and not 0 < value < energy[-1]:
            raise OpError(f"{name}[{c}] = {value} eV is outside the loss side of the data "
                          f"(0 to {energy[-1]:.3g} eV)")
    return list(values)


def _flat_index(block_shape, origin, shape) -> np.ndarray:
    """Global flat pixel index of every pixel of a block at `origin` in an image of `shape`."""
    index = np.indices(block_shape) + np.reshape(origin, (-1,) + (1,) * len(block_shape))
    return np.ravel_multi_index(tuple(index), shape)


def _candidates(labels, origin, shape, k, n_sample, seed) -> kernels.Sample:
    """A block's candidates without spectra: keys depend on the pixel index and seed alone."""
    flat = _flat_index(labels.shape, origin, shape)
    return kernels.block_sample(np.empty((*labels.shape, 0), np.float32), labels, flat, k,
                                n_sample, seed)


def _gather(spectra, labels, origin, shape, selection: kernels.Sample, k, n_sample, seed):
    """The selected pixels' spectra of one block (a handful of rows, not the block)."""
    flat = _flat_index(labels.shape, origin, shape).reshape(-1)
    chosen = np.isin(kernels.pixel_keys(flat, seed), selection.keys)
    rows = np.asarray(spectra).reshape(flat.size, spectra.shape[-1])[chosen]
    return kernels.block_sample(rows, np.asarray(labels).reshape(-1)[chosen], flat[chosen], k,
                                n_sample, seed)


def _merge(*samples: kernels.Sample, n_sample: int) -> kernels.Sample:
    return kernels.merge_samples(list(samples), n_sample)


def _merge_tree(samples: list, n_sample: int):
    """Merge delayed samples in a tree of fan-in 8.

    The samples go in as separate arguments: a list of delayed objects would make dask
    re-optimise the whole graph at every call (minutes for a thousand chunks).
    """
    while len(samples) > 1:
        samples = [dask.delayed(_merge, pure=True)(*samples[i:i + _MERGE_FAN_IN], n_sample=n_sample)
                   for i in range(0, len(samples), _MERGE_FAN_IN)]
    return samples[0]


def _with_sizes(sample: kernels.Sample, sizes: kernels.Sample) -> kernels.Sample:
    return kernels.Sample(sample.keys, sample.labels, sample.spectra, sizes.n_pixels)


def cluster_labels(clusters: xr.Dataset, spectra: xr.DataArray) -> tuple[xr.DataArray, int]:
    """The (pixel) label map of an eels.cluster output, checked against the image; and k."""
    require_variables(clusters, [CLUSTER])
    require_dims(clusters, [CLUSTER_ID])
    pixel_dims = _pixel_dims(spectra)
    labels = clusters[CLUSTER]
    if set(labels.dims) != set(pixel_dims) or any(
            labels.sizes[d] != spectra.sizes[d] for d in pixel_dims):
        raise OpError(f"the cluster map {dict(labels.sizes)} does not match the image's pixels "
                      f"{ {d: spectra.sizes[d] for d in pixel_dims} }")
    return labels.transpose(*pixel_dims), clusters.sizes[CLUSTER_ID]


def cluster_sample(spectra: xr.DataArray, labels: xr.DataArray, k: int, n_sample: int, seed: int):
    """A delayed kernels.Sample: up to n_sample spectra per cluster, seeded, chunk-order free.

    Two passes keep memory at k x n_sample spectra however large the image is: the first picks
    the pixels from the labels alone (each pixel's key is a seeded hash of its index), merged in
    a tree of fan-in 8; the second reads each block once more and keeps only the chosen rows.
    """
    pixel_dims = _pixel_dims(spectra)
    if spectra.chunks is None:
        spectra = spectra.chunk()
    pixel_chunks = spectra.chunks[:-1]
    labels = labels.transpose(*pixel_dims).chunk(dict(zip(pixel_dims, pixel_chunks, strict=True)))
    shape = tuple(spectra.sizes[d] for d in pixel_dims)
    offsets = [np.cumsum((0,) + c[:-1]) for c in pixel_chunks]
    label_blocks = labels.data.to_delayed(optimize_graph=False)
    blocks = [(i, block, tuple(int(offsets[a][b]) for a, b in enumerate(block)))
              for i, block in enumerate(np.ndindex(label_blocks.shape))]
    candidates = _merge_tree([dask.delayed(_candidates, pure=True)(
        label_blocks[block], origin, shape, k, n_sample, seed) for _, block, origin in blocks], n_sample)
    spectra_blocks = second_pass(spectra.data, candidates).to_delayed(optimize_graph=False).reshape(-1)
    gathered = _merge_tree([dask.delayed(_gather, pure=True)(
        spectra_blocks[i], label_blocks[block], origin, shape, candidates, k, n_sample, seed)
        for i, block, origin in blocks], n_sample)
    return dask.delayed(_with_sizes, pure=True)(gathered, candidates)


def _one_count(energy, quantiles, vacuum: int, de_i: float | None) -> float:
    """dE_II of the whole cluster set: where the vacuum cluster's median ZLP reaches one count."""
    try:
        w = kernels.zlp_windows(energy, quantiles[vacuum, 1], de_i)
    except ValueError as exc:
        raise ValueError(f"vacuum cluster {vacuum}: {exc}") from None
    return kernels.one_count_energy(energy, quantiles[vacuum, 1], w)[0]


def _summarise(sample: kernels.Sample, energy: np.ndarray, k: int, min_pixels: int,
               on_too_few: str, de_i: list[float | None], de_ii: list[float | None],
               rule: str = "knee", vacuum: int = 0) -> dict[str, np.ndarray]:
    """Quantiles, windows and sizes of every cluster from the merged sample."""
    n_pixels = sample.n_pixels.astype(np.int64)
    enough = n_pixels >= min_pixels
    if on_too_few == "error" and not enough.all():
        small = ", ".join(f"{c} ({n_pixels[c]} pixels)" for c in np.flatnonzero(~enough))
        raise ValueError(f"clusters with fewer than min_pixels={min_pixels} pixels: "
                         f"{small}; lower n_clusters or min_pixels, or set on_too_few: flag")
    quantiles = kernels.log_quantiles(sample, k)
    out = {name: np.full(k, np.nan) for name in ("de_i", "de_ii", "e_steepest", "e_first_minimum")}
    one_count = np.nan
    if rule == "vacuum":
        if n_pixels[vacuum] == 0:
            raise ValueError(f"vacuum cluster {vacuum} has no pixels to place dE_II on")
        one_count = _one_count(energy, quantiles, vacuum, de_i[vacuum])
        de_ii = [one_count if v is None else v for v in de_ii]
    for c in range(k):
        if n_pixels[c] == 0 or (de_i[c] is not None and de_ii[c] is not None):
            out["de_i"][c] = np.nan if de_i[c] is None else de_i[c]
            out["de_ii"][c] = np.nan if de_ii[c] is None else de_ii[c]
            continue
        try:
            w = kernels.zlp_windows(energy, quantiles[c, 1], de_i[c])
        except ValueError as exc:
            raise ValueError(f"cluster {c}: {exc}") from None
        out["de_i"][c] = w.de_i
        out["de_ii"][c] = w.de_ii if de_ii[c] is None else de_ii[c]
        out["e_steepest"][c], out["e_first_minimum"][c] = w.steepest, w.first_minimum
    bad = np.flatnonzero(out["de_ii"] <= out["de_i"])
    if bad.size:
        raise ValueError(f"dE_II must exceed dE_I; it does not for clusters {bad.tolist()} "
                         f"(dE_I {out['de_i'][bad].tolist()}, dE_II {out['de_ii'][bad].tolist()} eV)")
    return {**out, "n_pixels": n_pixels, "enough_pixels": enough, "quantiles": quantiles,
            "one_count": np.float64(one_count),
            "n_sampled": np.bincount(sample.labels, minlength=k).astype(np.int64)}


@register_op("eels.zlp_windows", params=WindowParams, inputs=("image", "clusters"),
             memory=needs.zlp_windows_need)
def zlp_windows(params: WindowParams, image: xr.Dataset, clusters: xr.Dataset) -> xr.Dataset:
    """Per cluster: median and P16/P84 of ln I(E), the fit windows dE_I, dE_II, and its size.

    The quantiles come from a seeded uniform sample of up to n_sample spectra per cluster.
    dE_I is the knee of the median ln I between its steepest descent and first minimum after
    the peak, dE_II where the exponential through those two points falls to one count (exact
    rules: kernels.eels_cluster.zlp_windows); recipe overrides replace either per cluster.
    Channels whose quantile is not a positive count are NaN.
    """
    spectra = spectra_of(image, params.variable)
    energy = energy_axis(image)
    labels, k = cluster_labels(clusters, spectra)
    de_i = _overrides(params.de_i, "de_i", k, energy)
    de_ii = _overrides(params.de_ii, "de_ii", k, energy)
    for c, (low, high) in enumerate(zip(de_i, de_ii, strict=True)):
        if low is not None and high is not None and not high > low:
            raise OpError(f"de_ii[{c}] = {high} eV must be larger than de_i[{c}] = {low} eV")
    if params.vacuum_cluster >= k:
        raise OpError(f"vacuum_cluster={params.vacuum_cluster} but the clusters input has {k} "
                      f"clusters (0 to {k - 1})")
    sample = cluster_sample(spectra, labels, k, params.n_sample, params.seed)
    summary = dask.delayed(_summarise, pure=True)(
        sample, energy, k, params.min_pixels, params.on_too_few, de_i, de_ii, params.de_ii_rule,
        params.vacuum_cluster)

    def lazy(key, dims, shape_, dtype, attrs):
        array = da.from_delayed(summary[key], shape_, dtype=dtype)
        return xr.DataArray(array, dims=dims, attrs=attrs)

    n_e = energy.size
    quantiles = da.from_delayed(summary["quantiles"], (k, len(kernels.QUANTILES), n_e),
                                dtype=np.float64)
    result = {
        "de_i": lazy("de_i", (CLUSTER_ID,), (k,), np.float64,
                     {"units": "eV", "long_name": "dE_I: end of the ZLP-dominated fit region"}),
        "de_ii": lazy("de_ii", (CLUSTER_ID,), (k,), np.float64,
                      {"units": "eV", "long_name": "dE_II: start of the one-count region"}),
        "e_steepest": lazy("e_steepest", (CLUSTER_ID,), (k,), np.float64,
                           {"units": "eV", "long_name": "steepest descent of the median ln I"}),
        "e_first_minimum": lazy("e_first_minimum", (CLUSTER_ID,), (k,), np.float64,
                                {"units": "eV", "long_name": "first minimum after the peak"}),
        "n_pixels": lazy("n_pixels", (CLUSTER_ID,), (k,), np.int64,
                         {"long_name": "pixels in the cluster"}),
        "enough_pixels": lazy("enough_pixels", (CLUSTER_ID,), (k,), bool,
                              {"long_name": f"cluster has at least {params.min_pixels} pixels"}),
        "n_sampled": lazy("n_sampled", (CLUSTER_ID,), (k,), np.int64,
                          {"long_name": "spectra sampled for the quantiles"}),
        "one_count_ev": lazy("one_count", (), (), np.float64,
                             {"units": "eV", "long_name": "where the vacuum cluster's median ZLP "
                              "falls to one count (NaN with de_ii_rule knee)",
                              "vacuum_cluster": params.vacuum_cluster}),
    }
    for j, name in enumerate(("ln_i_p16", "ln_i_median", "ln_i_p84")):
        result[name] = xr.DataArray(
            quantiles[:, j], dims=(CLUSTER_ID, ENERGY),
            attrs={"units": "1", "long_name": f"{name[5:]} of ln counts over the cluster's "
                   f"sampled spectra (n_sample={params.n_sample})"})
    return xr.Dataset(result, coords={CLUSTER_ID: np.arange(k), ENERGY: image[ENERGY]},
                      attrs=dict(image.attrs))
