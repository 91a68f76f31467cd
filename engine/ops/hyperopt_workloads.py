"""replicas.hyperopt adapters for the workloads' own training ops (hyperopt_adapters.Adapter).

- eels.train_zlp: folds split each cluster's sampled spectra (every fold holds every cluster).
  A fold trains the ensemble on the other spectra (the op's training set: one drawn spectrum per
  cluster per replica) and is scored by the held-out chi2/n: every held-out spectrum's ln I on
  the op's own target points (core below dE_I with the cluster's spread as error, the one-count
  tail above dE_II with error 0.8), predicted at that spectrum's ln N. Baseline: the fitted
  spectra's median ln I per cluster, blind to ln N (chi2/n O(1) by construction of the errors),
  reported beside each trial: a network below it predicts unseen spectra better than the
  cluster's median ZLP (subtract_zlp's zlp: vacuum idea); one above it is still crowned if it
  is the best, as small ensembles of few clusters seldom beat it (README, hyperopt).
- lhc.train_classifier: folds split the jets; a fold trains on the other jets (the op's
  validation share for stopping, bootstrap replicas) and is scored on the held-out jets by the
  binary cross-entropy of the kept replicas' mean probability (default; a proper score: it
  rewards separation and calibration) or 1 - AUC. Baseline: a constant prediction (the training
  signal fraction; AUC 0.5), which a trial must beat.
- lhc.anomaly_score: as the tagger, but the autoencoder trains on the background jets of the
  other folds, and is scored by 1 - AUC of its reconstruction error on the held-out jets
  (default) or the held-out background jets' reconstruction error. Baseline: every jet
  reconstructed as the training mean, whose error |x|^2 of the standardised jet is already a
  discriminant (1 - AUC ~0.14 on the synthetic top jets), which a trial must beat.
- amp.train: folds split the phase-space points; a fold trains the heteroscedastic ensemble on
  the others (with the op's own sigma-scale holdout) and is scored by the held-out Gaussian
  negative log-likelihood per point of ln |M|^2 under the ensemble's mean and calibrated total
  sigma (default; proper, so it rewards both precision and honest sigmas), or the mean squared
  error of ln |M|^2. Baseline: a constant (the training mean and spread of ln |M|^2).
"""

from __future__ import annotations

import inspect
import logging
import math
from typing import Any

import numpy as np
import xarray as xr

from ..errors import OpError
from . import needs
from .core import as_delayed
from .hyperopt_adapters import Adapter, FoldScore, Loaded, no_checkpoints, register_adapter, stopping_fraction

log = logging.getLogger("engine.hyperopt")
ZLP_MIN_REPLICAS = 10  # below: the held-out chi2/n is mostly which replicas pass selection (README)


def trial_settings(hyper) -> dict[str, Any]:
    """Every trial trains `replicas` replicas and writes no training checkpoints (it reruns whole)."""
    return {"replicas": hyper.replicas} | no_checkpoints(hyper)


# -- eels.train_zlp ---------------------------------------------------------------------------------
def _zlp_prepare(hyper, training, inputs: dict[str, xr.Dataset]) -> tuple[dict[str, Any], None]:
    from .eels import energy_axis, spectra_of
    from .eels_cluster import cluster_labels, cluster_sample
    from .eels_zlp import windows_of

    if hyper.replicas < ZLP_MIN_REPLICAS:
        log.warning(
            "eels.train_zlp scan with %d replicas per trial: a fold that keeps one or two of them "
            "scores their own ln N extrapolation, and the trials' rewards are mostly noise "
            "(measured at 3 replicas: one setting's reward 5-38 over seeds); use %d or more",
            hyper.replicas,
            ZLP_MIN_REPLICAS,
        )
    image = inputs["data"]
    spectra = spectra_of(image, training.variable)
    labels, k = cluster_labels(inputs["clusters"], spectra)
    de_i, de_ii = windows_of(inputs["windows"], k)
    sample = cluster_sample(spectra, labels, k, training.n_spectra, training.seed)
    pieces = {
        "sample": sample,
        "energy": energy_axis(image),
        "de_i": as_delayed(de_i.data),
        "de_ii": as_delayed(de_ii.data),
    }
    return pieces, None  # how many spectra each cluster gives is known once sampled


def _zlp_load(pieces: dict[str, Any]) -> Loaded:
    sample = pieces["sample"]
    de_i = np.atleast_1d(np.asarray(pieces["de_i"], float))
    labels = np.asarray(sample.labels, np.int64)
    empty = [c for c in range(de_i.size) if not np.any(labels == c)]
    if empty:
        raise ValueError(f"clusters {empty} have no pixels to draw ZLP replicas from; lower n_clusters")
    arrays = {
        "spectra": np.asarray(sample.spectra, float),
        "labels": labels,
        "energy": np.asarray(pieces["energy"], float),
        "de_i": de_i,
        "de_ii": np.atleast_1d(np.asarray(pieces["de_ii"], float)),
    }
    return Loaded(arrays, labels.size, strata=labels)


def _zlp_fold(arrays, training, held: np.ndarray, hyper, metric: str) -> FoldScore:
    from ..kernels.zlp import HIGH_TARGET_SIGMA, cluster_points, zlp_on_grid, zlp_training_set
    from .eels_zlp import train_on

    spectra, labels, energy = arrays["spectra"], arrays["labels"], arrays["energy"]
    de_i, de_ii = arrays["de_i"], arrays["de_ii"]
    fitted = [spectra[(labels == c) & ~held] for c in range(de_i.size)]
    training_set = zlp_training_set(fitted, energy, de_i, de_ii, hyper.replicas, training.seed)
    result = train_on(training_set, training)
    epochs, kept = stopping_fraction(result, training.epochs), result.kept
    weights = {name: np.asarray(value)[kept] for name, value in result.weights.items()}
    # the op's target points: those zlp_training_set lays out, with its own defaults
    layout = {
        name: p.default
        for name, p in inspect.signature(zlp_training_set).parameters.items()
        if name in ("n_high", "min_counts")
    }
    squared, constant = [], []
    for c in range(de_i.size):
        core, sigma_core, tail = cluster_points(fitted[c], energy, de_i[c], de_ii[c], **layout)
        shown = spectra[(labels == c) & held]  # (m, E)
        target = np.c_[np.log(np.maximum(shown[:, core], 1.0)), np.zeros((len(shown), tail.size))]
        sigma = np.r_[sigma_core, np.full(tail.size, HIGH_TARGET_SIGMA)]
        # the baseline: the fitted spectra's median ln I, whatever a spectrum's ln N
        median = np.r_[np.median(np.log(np.maximum(fitted[c][:, core], 1.0)), axis=0), np.zeros(tail.size)]
        constant.append((((median - target) / sigma) ** 2).reshape(-1))
        if not kept.any():
            continue
        model = zlp_on_grid(
            weights,
            result.architecture,
            training_set.scaling,
            energy[np.r_[core, tail]],
            np.log(shown.sum(axis=1)),
            device=training.device,
        ).astype(float)  # (R, m, channels)
        if hyper.reward.chi2 == "central":
            model = model.mean(axis=0, keepdims=True)
        squared.append((((model - target) / sigma) ** 2).reshape(len(model), -1))
    baseline = float(np.concatenate(constant).mean())
    if not kept.any():
        return FoldScore(math.inf, 0.0, epochs, baseline)
    chi2 = float(np.concatenate(squared, axis=1).mean(axis=1).mean())
    return FoldScore(chi2 if math.isfinite(chi2) else math.inf, float(kept.mean()), epochs, baseline)


def _zlp_need(hyper, training, inputs: dict[str, xr.Dataset], output: xr.Dataset) -> int:
    return needs.train_zlp_need(training, {"image": inputs["data"], "windows": inputs["windows"]}, output)


register_adapter(
    Adapter(
        op="eels.train_zlp",
        metrics={"chi2": "held-out chi2/n of ln I on the op's target points of every held-out spectrum"},
        prepare=_zlp_prepare,
        load=_zlp_load,
        fold=_zlp_fold,
        need=_zlp_need,
        inputs=("clusters", "windows"),
        folds=("points",),
        baseline=True,
        fixed=("variable", "n_spectra", "replicas", "checkpoint_every"),
        overrides=trial_settings,
    )
)


# -- lhc.train_classifier ----------------------------------------------------------------------------
def _tagger_prepare(hyper, training, inputs: dict[str, xr.Dataset]) -> tuple[dict[str, Any], int]:
    from .lhc_tagging import JET, jet_features, jet_mass_of

    jets = inputs["data"]
    if training.max_jets is not None:
        jets = jets.isel({JET: slice(0, training.max_jets)})
    pieces = {
        "features": as_delayed(jet_features(jets, training.n_constituents)),
        "labels": as_delayed(jets["label"].data),
    }
    if getattr(training, "adversary", None) is not None:
        pieces["mass"] = as_delayed(jet_mass_of(jets))
    return pieces, jets.sizes[JET]


def _tagger_load(pieces: dict[str, Any]) -> Loaded:
    labels = np.asarray(pieces["labels"]).astype(int)
    if labels.all() or not labels.any():
        raise ValueError(
            f"the jets' labels are all {labels[0]} ({labels.size} jets): a tagger needs "
            "signal (1) and background (0) jets to be trained and judged"
        )
    arrays = {"features": np.asarray(pieces["features"]), "labels": labels}
    if "mass" in pieces:
        arrays["mass"] = np.asarray(pieces["mass"], float)
    return Loaded(arrays, labels.size)


def binary_cross_entropy(probability: np.ndarray, labels: np.ndarray) -> float:
    """Mean -[y ln p + (1 - y) ln(1 - p)] in nats (p clipped to 1e-7 from 0 and 1)."""
    p = np.clip(np.asarray(probability, float), 1e-7, 1 - 1e-7)
    return float(-np.mean(np.where(labels == 1, np.log(p), np.log1p(-p))))


def _tagger_fold(arrays, training, held: np.ndarray, hyper, metric: str) -> FoldScore:
    """A tagger (lhc.train_classifier) or, for lhc.anomaly_score, an autoencoder trained on the
    background jets only, by the op's own lhc_tagging.train_on; scored on the held-out jets."""
    from ..kernels.classifier import auc, evaluate_network
    from .lhc_tagging import split_jets, train_on

    kind = "reconstruction" if hyper.op == "lhc.anomaly_score" else "bce"
    x, y = arrays["features"], arrays["labels"]
    shown = y[held]
    if shown.all() or not shown.any():
        raise ValueError(f"a fold's {shown.size} held-out jets hold one class only; give more jets or k")
    x_fit, y_fit = x[~held], y[~held]
    split = split_jets(len(y_fit), 0.0, training.validation_fraction, training.seed)  # the fold is the test
    train, val = split == 0, split == 1
    if kind == "reconstruction":  # the autoencoder learns background only
        train, val = train & (y_fit == 0), val & (y_fit == 0)
    if train.sum() < 2 or val.sum() < 2:
        raise ValueError(f"a fold leaves {int(train.sum())} training and {int(val.sum())} validation jets")
    mass = arrays["mass"][~held] if "mass" in arrays else None
    result, scale = train_on(kind, x_fit, y_fit, train, val, training, mass)
    epochs = stopping_fraction(result, training.epochs)
    if not result.kept.any():
        return FoldScore(math.inf, 0.0, epochs)
    scores = evaluate_network(kind, result.weights, result.architecture, x[held], scale, training.device)
    scores = scores[result.kept]
    if hyper.reward.chi2 == "central":
        scores = scores.mean(axis=0, keepdims=True)
    if metric == "bce":
        values = [binary_cross_entropy(s, shown) for s in scores]
        baseline = binary_cross_entropy(np.full(shown.size, y_fit[train].mean()), shown)
    else:
        if kind == "reconstruction":  # the constant: every jet reconstructed as the training mean
            constant = np.mean(scale(x[held]).astype(float) ** 2, axis=1)
        if metric == "background_mse":  # the autoencoder's own loss on held-out background jets
            values = [float(np.mean(s[shown == 0])) for s in scores]
            baseline = float(np.mean(constant[shown == 0]))
        else:  # the constant's AUC: an autoencoder's is |x|^2's (0.5 for a classifier)
            values = [1.0 - auc(s, shown) if np.all(np.isfinite(s)) else math.nan for s in scores]
            baseline = 1.0 - auc(constant, shown) if kind == "reconstruction" else 0.5
    value = float(np.mean(values))
    return FoldScore(value if math.isfinite(value) else math.inf, float(result.kept.mean()), epochs, baseline)


def _tagger_need(hyper, training, inputs: dict[str, xr.Dataset], output: xr.Dataset) -> int:
    """Every jet's features in a few copies, the bootstrap weights, the ensemble on a batch, the
    held-out scores (needs.tagger_need's terms for a classifier)."""
    jets = inputs["data"]
    n = min(jets.sizes["jet"], training.max_jets or jets.sizes["jet"])
    width, r = 3 * training.n_constituents, hyper.replicas
    return (
        needs.chunk_task(2.0, {"jets": jets}, output)
        + needs.FEATURE_COPIES * n * width * needs.FLOAT32
        + 2 * r * n * needs.FLOAT64
        + needs.ensemble_training_bytes(
            r,
            [width, *training.hidden, width if hyper.op == "lhc.anomaly_score" else 1],
            training.batch_size or n,
        )
    )


TAGGER = {  # what the tagger's and the autoencoder's adapters share
    "prepare": _tagger_prepare,
    "load": _tagger_load,
    "fold": _tagger_fold,
    "need": _tagger_need,
    "folds": ("points", "group"),
    "max_reward": None,
    "baseline": True,
    "must_beat_baseline": True,
    "fixed": ("n_constituents", "max_jets", "replicas", "checkpoint_every", "test_fraction"),
    "overrides": trial_settings,
}
register_adapter(
    Adapter(
        op="lhc.train_classifier",
        metrics={
            "bce": "held-out binary cross-entropy (nats per jet) of the kept replicas' mean probability",
            "one_minus_auc": "1 - held-out AUC of the kept replicas' mean probability",
        },
        **TAGGER,
    )
)
register_adapter(
    Adapter(
        op="lhc.anomaly_score",
        metrics={
            "one_minus_auc": "1 - held-out AUC of the kept replicas' mean reconstruction error as the "
            "anomaly score (signal jets should reconstruct worse)",
            "background_mse": "held-out mean squared reconstruction error of background jets (the "
            "autoencoder's own loss, standardised inputs)",
        },
        **TAGGER,
    )
)


# -- amp.train ------------------------------------------------------------------------------------
def _amp_prepare(hyper, training, inputs: dict[str, xr.Dataset]) -> tuple[dict[str, Any], int]:
    from .amp import point_variables

    data = inputs["data"]
    features = point_variables(data, training.features)
    (target,) = point_variables(data, [training.target])
    if target.dims != features[0].dims:
        raise OpError(f"target {training.target!r} must lie along {features[0].dims}, found {target.dims}")
    pieces = {f"feature_{i}": as_delayed(f.data) for i, f in enumerate(features)}
    return pieces | {"target": as_delayed(target.data)}, target.size


def _amp_load(pieces: dict[str, Any]) -> Loaded:
    names = sorted((k for k in pieces if k.startswith("feature_")), key=lambda k: int(k.split("_")[1]))
    target = np.asarray(pieces["target"], float)
    if not np.all(target > 0) or not np.all(np.isfinite(target)):
        raise ValueError("amplitudes must be positive and finite (the networks learn their logarithm)")
    return Loaded(
        {"x": np.stack([np.asarray(pieces[k], float) for k in names], -1), "target": target}, target.size
    )


def _amp_fold(arrays, training, held: np.ndarray, hyper, metric: str) -> FoldScore:
    from ..kernels.amplitudes import predict_amplitude
    from .amp import train_on

    target = arrays["target"][~held]
    result, low, high, scale, k = train_on(arrays["x"][~held], target, training)
    epochs = stopping_fraction(result, training.epochs)
    if not result.kept.any():
        return FoldScore(math.inf, 0.0, epochs)
    with np.errstate(all="ignore"):  # a diverged trial's sigma may be 0 or inf: scored inf below
        out = predict_amplitude(
            result.weights,
            result.architecture,
            arrays["x"][held],
            low,
            high,
            scale,
            kept=result.kept,
            sigma_scale=k,
            device=training.device,
        )
        y = np.log(arrays["target"][held])
        fitted_log = np.log(target)
        mean, spread = fitted_log.mean(), fitted_log.std()
        if metric == "nll":
            value = float(np.mean(_gaussian_nll(y, out["log_mean"], out["sigma"])))
            baseline = float(np.mean(_gaussian_nll(y, mean, spread)))
        else:
            value = float(np.mean((out["log_mean"] - y) ** 2))
            baseline = float(np.mean((y - mean) ** 2))
    return FoldScore(value if math.isfinite(value) else math.inf, float(result.kept.mean()), epochs, baseline)


def _gaussian_nll(y, mean, sigma) -> np.ndarray:
    return 0.5 * np.log(2 * np.pi * sigma**2) + 0.5 * ((y - mean) / sigma) ** 2


def _amp_need(hyper, training, inputs: dict[str, xr.Dataset], output: xr.Dataset) -> int:
    data = inputs["data"]
    rows = training.batch_size or data[training.target].size
    return 4 * needs.whole_bytes(data) + needs.ensemble_training_bytes(
        hyper.replicas, [len(training.features), *training.hidden, 2], rows
    )


register_adapter(
    Adapter(
        op="amp.train",
        metrics={
            "nll": "held-out Gaussian negative log-likelihood per point of ln |M|^2 (mean, calibrated sigma)",
            "mse": "held-out mean squared error of ln |M|^2 (the ensemble mean)",
        },
        prepare=_amp_prepare,
        load=_amp_load,
        fold=_amp_fold,
        need=_amp_need,
        folds=("points", "group"),
        max_reward=None,
        baseline=True,
        must_beat_baseline=True,
        fixed=("features", "target", "replicas", "checkpoint_every"),
        overrides=trial_settings,
    )
)
