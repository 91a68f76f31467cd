"""replicas.hyperopt adapters for the remaining training ops (hyperopt_adapters.Adapter), and the
training ops a scan refuses.

- calo.train_flow: folds split the showers. A fold trains both flows on the other showers by the
  op's own training loop (calo.train_flows: its initial state, learning-rate schedule, validation
  share and steps, the fold's showers as one chunk), standardised by the fold's own showers, and
  is scored by the held-out NLL per shower of both flows together (nats, standardised features,
  dequantised with noise keyed by the scan's seed: the same for every trial). Baseline: a
  diagonal Gaussian over the same standardised features (each feature's training mean and
  spread, no correlations), which a trial must beat. The flows are one model, not replicas:
  `replicas` is not used.
- lhc.eft_train: folds split the events of every (sample, MC replica). A fold trains the term x
  replica ensemble on the other events (the op's own settings and sample layout, the first
  `replicas` MC replicas) and is scored by the EFT's own loss on the held-out events: the
  cross-section weighted cross-entropy of SM vs SM + term relative to the best constant
  classifier, averaged over the kept (term, replica) networks. The constant scores 1 exactly,
  so a trial must score below 1.
- lhc.omnifold: folds split the MC events and the data events (every fold holds both). A fold
  runs the op's iteration 1, step 1 on the other events, drawn and trained by the op's own
  functions (kernels.omnifold.resample, step_config, train_step_classifier: data reco vs MC
  reco, bootstrap/Poisson replicas, balanced classes, the output layer started at f = 1/2), and
  is scored by its held-out balanced binary cross-entropy; the constant f = 1/2 scores ln 2,
  which a trial must beat by more than the noise (hyperopt.baseline_margin: the held-out events'
  paired error or the folds' scatter, the larger). Later iterations reuse the same classifier
  settings, so this scores what the searchable params (widths, lr, epochs, patience,
  batch_size) control; the unfolded-vs-truth distance is not used (it needs the truth, and
  unfolds the training events, not held-out ones). lr = 10 fails honestly: the op keeps the
  lowest training loss, which at that step size is the start (f = 1/2), so its unfolding never
  leaves the prior (tests/ops/test_hyperopt_physics.py) and the fold scores exactly ln 2.
- solve.equation, solve.bounce: there are no data to split; folds are k independent solves from
  the seeds seed + fold (folds by: seeds). solve.equation is scored by the max error of the
  replica mean against the analytic solution on the output grid (the op's max_error; default)
  or by the mean squared equation residual on the held-out collocation points (cell midpoints
  the training never fits); solve.bounce by that held-out residual (default) or Derrick's
  mismatch |S - 2T/3| / |S| of the action (0 at a true bounce), averaged over potentials; a
  bounce fold also fails where its replicas' actions spread by more than ACTION_SPREAD_LIMIT.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import xarray as xr

from ..errors import OpError
from . import needs
from .core import as_delayed
from .hyperopt_adapters import (
    Adapter,
    FoldScore,
    Loaded,
    no_checkpoints,
    refuse,
    register_adapter,
    stopping_fraction,
)


def replicas_per_trial(hyper) -> dict[str, Any]:
    """Every trial trains the scan's `replicas` (ops with no training checkpoints)."""
    return {"replicas": hyper.replicas}


def _diagonal_gaussian_nll(x: np.ndarray) -> float:
    """Mean NLL per row of standardised features x (n, d) under independent N(0, 1)."""
    return float(np.mean(0.5 * np.sum(x**2 + np.log(2 * np.pi), axis=1)))


# -- calo.train_flow ---------------------------------------------------------------------------------
def _calo_prepare(hyper, training, inputs: dict[str, xr.Dataset]) -> tuple[dict[str, Any], int]:
    from .calo import SHOWER, shower_layout, shower_quantum

    showers = inputs["data"]
    n_layers, n_cells = shower_layout(showers, "data")
    if training.max_showers is not None:
        showers = showers.isel({SHOWER: slice(0, training.max_showers)})
    pieces = {
        "energy": as_delayed(showers["energy"].data),
        "incident": as_delayed(showers["incident_energy"].data),
        "shape": (n_layers, n_cells, shower_quantum(training.quantum, showers)),
    }
    return pieces, showers.sizes[SHOWER]


def _calo_load(pieces: dict[str, Any]) -> Loaded:
    n_layers, n_cells, quantum = pieces["shape"]
    incident = np.asarray(pieces["incident"], float)
    arrays = {"energy": np.asarray(pieces["energy"], float), "incident": incident}
    return Loaded(arrays | {"layers": n_layers, "cells": n_cells, "quantum": quantum}, incident.size)


def _calo_fold(arrays, training, held: np.ndarray, hyper, metric: str) -> FoldScore:
    import torch

    from ..kernels.calo_flow import (
        feature_moments,
        load_flows,
        negative_log_likelihood,
        scaling_from_moments,
        to_features,
    )
    from .calo import flow_spec, train_flows

    spec = flow_spec(training, arrays["layers"], arrays["cells"], arrays["quantum"])
    energy, incident = arrays["energy"], arrays["incident"]
    fit_energy, fit_incident = energy[~held], incident[~held]
    mean, std = scaling_from_moments(feature_moments(fit_energy, fit_incident, spec))
    # the op's own training loop, the fold's training showers as its one chunk
    showers = SimpleNamespace(index=0, load=lambda: (fit_energy, fit_incident))
    state = train_flows([showers], spec, {"mean": mean, "std": std}, training)
    rng = np.random.default_rng([hyper.seed, int(np.flatnonzero(held)[0])])  # the fold's noise
    x = ((to_features(energy[held], incident[held], spec, rng) - mean) / std).astype(np.float32)
    baseline = _diagonal_gaussian_nll(x.astype(float))
    flows = load_flows(state, spec)
    with torch.no_grad():
        nll1, nll2 = negative_log_likelihood(flows, x, spec)
        value = float((nll1 + nll2).mean())
    return FoldScore(value if math.isfinite(value) else math.inf, 1.0, 1.0, baseline)


def _calo_need(hyper, training, inputs: dict[str, xr.Dataset], output: xr.Dataset) -> int:
    """The showers whole, their features (float64) in a few copies, and both flows' training
    state (weights, gradients, Adam moments) with the minibatch activations."""
    showers = inputs["data"]
    n = min(showers.sizes["shower"], training.max_showers or showers.sizes["shower"])
    features = 1 + showers.sizes["layer"] * (1 + showers.sizes["cell"])
    width = max(training.hidden)
    flows = (
        2 * training.transforms * (features * width + width * width + width * features * 3 * training.bins)
    )
    return (
        needs.whole_bytes(showers)
        + 6 * n * features * needs.FLOAT64
        + 8 * flows * needs.FLOAT32
        + needs.ensemble_training_bytes(
            2 * training.transforms, [features, *training.hidden], training.batch_size
        )
    )


register_adapter(
    Adapter(
        op="calo.train_flow",
        metrics={"nll": "held-out NLL per shower of both flows (nats, standardised dequantised features)"},
        prepare=_calo_prepare,
        load=_calo_load,
        fold=_calo_fold,
        need=_calo_need,
        folds=("points", "group"),
        max_reward=None,
        baseline=True,
        must_beat_baseline=True,
        fixed=("max_showers", "quantum", "checkpoint_every"),
        overrides=no_checkpoints,
    )
)


# -- lhc.eft_train -----------------------------------------------------------------------------------
def _eft_prepare(hyper, training, inputs: dict[str, xr.Dataset]) -> tuple[dict[str, Any], int]:
    from ..kernels.eft_toy import eft_terms, term_name
    from .lhc_eft import EVENT, SampleLayout, require_features

    events = inputs["data"]
    terms = eft_terms(training.coefficients, training.quadratic)
    layout = SampleLayout(events, terms)
    if hyper.replicas > layout.replicas:
        raise OpError(
            f"replicas: {hyper.replicas} per trial, but the events hold {layout.replicas} MC replicas"
        )
    features = require_features(events, training.features)
    pieces = {
        "features": [as_delayed(f.data) for f in features],
        "sample_id": as_delayed(events["sample_id"].data),
        "mc_replica": as_delayed(events["mc_replica"].data),
        "layout": {  # plain values: what the fold needs of SampleLayout, the first `replicas` replicas
            "sm": layout.sm,
            "terms": layout.terms,
            "names": [term_name(t) for t in terms],
            "replicas": hyper.replicas,
            "sigma_sm": layout.sigma_sm,
            "sigma": layout.sigma,
            "c_scale": layout.c_scale,
        },
    }
    return pieces, events.sizes[EVENT]


def _eft_load(pieces: dict[str, Any]) -> Loaded:
    x = np.stack([np.asarray(f, float) for f in pieces["features"]], axis=-1)
    arrays = {
        "x": x,
        "sample_id": np.asarray(pieces["sample_id"]),
        "mc_replica": np.asarray(pieces["mc_replica"]),
        "layout": pieces["layout"],
    }
    return Loaded(arrays, len(x))


def relative_cross_entropy(r_sm: np.ndarray, r_eft: np.ndarray, sigma_sm: float, sigma_eft: float) -> float:
    """The EFT's training loss of one network on given events, relative to the best constant
    classifier (kernels.eft.WeightedCrossEntropy): SM events (weight sigma_SM / N) cost
    ln(1 + r), SM + term events (sigma / M) ln(1 + 1/r); the constant r = sigma / sigma_SM
    scores exactly 1."""
    ratio = sigma_eft / sigma_sm
    constant = (sigma_sm + sigma_eft) * np.log1p(ratio) - sigma_eft * np.log(ratio)
    with np.errstate(divide="ignore", invalid="ignore"):
        loss = sigma_sm * np.mean(np.log1p(r_sm)) + sigma_eft * np.mean(np.log1p(1.0 / r_eft))
    return float(loss / constant)


def _eft_fold(arrays, training, held: np.ndarray, hyper, metric: str) -> FoldScore:
    from ..kernels.eft import fit_eft, predict_terms
    from .lhc_eft import term_samples, training_config

    info = arrays["layout"]
    layout = SimpleNamespace(sm=info["sm"], terms=info["terms"], replicas=info["replicas"])
    names, r = info["names"], info["replicas"]
    x, sample, replica = arrays["x"], arrays["sample_id"], arrays["mc_replica"]
    sm, eft = term_samples(x[~held], sample[~held], replica[~held], layout, names)
    sm_held, eft_held = term_samples(x[held], sample[held], replica[held], layout, names)
    c_scale, sigma = np.array(info["c_scale"]), np.array(info["sigma"])
    result, low, high = fit_eft(sm, eft, info["sigma_sm"], sigma, c_scale, training_config(training))
    epochs = stopping_fraction(result, training.epochs)
    kept = np.asarray(result.kept, bool).reshape(len(names), r)
    if not kept.any(axis=1).all():  # a term with no kept network: the model is unusable (lhc.eft_ratio)
        return FoldScore(math.inf, float(kept.mean()), epochs, 1.0)
    scores = []
    for t in range(len(names)):
        events = np.concatenate([sm_held.reshape(-1, x.shape[1]), eft_held[t].reshape(-1, x.shape[1])])
        nn = predict_terms(result.weights, result.architecture, events, low, high, training.device)
        ratio = 1.0 + c_scale[t] * nn[t * r : (t + 1) * r]  # (R, events): this term's rows
        n_sm = sm_held.shape[1]
        for k in np.flatnonzero(kept[t]):
            r_sm = ratio[k, k * n_sm : (k + 1) * n_sm]  # replica k's own SM events
            r_eft = ratio[k, sm_held.shape[0] * n_sm :].reshape(r, -1)[k]
            scores.append(relative_cross_entropy(r_sm, r_eft, info["sigma_sm"], sigma[t]))
    value = float(np.mean(scores))
    return FoldScore(value if math.isfinite(value) else math.inf, float(kept.mean()), epochs, 1.0)


def _eft_need(hyper, training, inputs: dict[str, xr.Dataset], output: xr.Dataset) -> int:
    """lhc.eft_train's terms (needs.eft_train_need) with terms x `replicas` networks."""
    from ..kernels.eft_toy import eft_terms

    events = inputs["data"]
    rows = len(eft_terms(training.coefficients, training.quadratic)) * hyper.replicas
    model = xr.Dataset(coords={"replica": np.arange(rows)})
    return needs.eft_train_need(training, {"events": events}, model)


register_adapter(
    Adapter(
        op="lhc.eft_train",
        metrics={
            "cross_entropy": "held-out weighted cross-entropy of SM vs SM + term relative to the best "
            "constant classifier (the EFT's own loss; 1 = learned nothing), over kept networks"
        },
        prepare=_eft_prepare,
        load=_eft_load,
        fold=_eft_fold,
        need=_eft_need,
        folds=("points",),
        max_reward=None,
        baseline=True,
        must_beat_baseline=True,
        fixed=("features", "coefficients", "quadratic", "checkpoint_every"),
        overrides=no_checkpoints,
    )
)


# -- lhc.omnifold ------------------------------------------------------------------------------------
def _omnifold_prepare(hyper, training, inputs: dict[str, xr.Dataset]) -> tuple[dict[str, Any], None]:
    from .lhc_omnifold import event_column

    samples = inputs["data"]
    reco, data = event_column(samples, training.mc_reco), event_column(samples, training.data_reco)
    return {"mc_reco": as_delayed(reco.data), "data_reco": as_delayed(data.data)}, None


def _omnifold_load(pieces: dict[str, Any]) -> Loaded:
    reco, data = np.asarray(pieces["mc_reco"], float), np.asarray(pieces["data_reco"], float)
    source = np.r_[np.zeros(reco.size, np.int64), np.ones(data.size, np.int64)]  # 0 MC, 1 data
    return Loaded({"values": np.r_[reco, data], "source": source}, source.size, strata=source)


def _omnifold_fold(arrays, training, held: np.ndarray, hyper, metric: str) -> FoldScore:
    """The op's iteration 1, step 1 on the events not held: data reco (label 1) vs MC reco
    (label 0), drawn and trained exactly as lhc.omnifold draws and trains them on those events
    (kernels.omnifold: `resample`, `step_config`, `train_step_classifier`, which starts the
    network's output layer at zero, f = 1/2), and scored on the held events. Every replica is
    scored, as the op uses every replica."""
    from ..kernels.omnifold import resample, step_config, train_step_classifier
    from .lhc_omnifold import network_config

    values, source = arrays["values"], arrays["source"]
    data, reco = values[~held & (source == 1)], values[~held & (source == 0)]
    drawn = resample(reco.size, data.size, training.replicas, training.seed, training.validation_fraction)
    step = train_step_classifier(
        data, drawn.data_weights, reco, drawn.mc_counts, drawn.step1_held,
        step_config(network_config(training), 1, 1), values[held], training.batch_size,
    )  # fmt: skip
    kept, epochs = float(step.fit.kept.mean()), stopping_fraction(step.fit, training.epochs)
    f = np.clip(step.f, 1e-7, 1 - 1e-7)
    if hyper.reward.chi2 == "central":
        f = f.mean(axis=0, keepdims=True)
    shown = source[held]
    losses = np.where(shown == 1, -np.log(f), -np.log1p(-f)) - math.log(2)  # (R, events) vs f = 1/2
    classes = [losses[:, shown == c] for c in (0, 1)]  # balanced: each class weighs 1/2
    value = math.log(2) + float(np.mean([0.5 * (a.mean() + b.mean()) for a, b in zip(*classes)]))
    paired = classes[0].mean(0), classes[1].mean(0)  # per event, over replicas
    error = 0.5 * math.sqrt(sum(p.var(ddof=1) / p.size for p in paired))
    return FoldScore(value if math.isfinite(value) else math.inf, kept, epochs, math.log(2), 2 * error)


def _omnifold_need(hyper, training, inputs: dict[str, xr.Dataset], output: xr.Dataset) -> int:
    samples = inputs["data"]
    n = samples[training.mc_reco].size + samples[training.data_reco].size
    rows = training.batch_size or n
    return (
        needs.whole_bytes(samples)
        + 6 * training.replicas * n * needs.FLOAT64
        + needs.ensemble_training_bytes(training.replicas, [1, *training.hidden, 1], rows)
    )


register_adapter(
    Adapter(
        op="lhc.omnifold",
        metrics={
            "step1_bce": "held-out balanced binary cross-entropy of iteration 1's step-1 classifier "
            "(data reco vs MC reco; ln 2 = a constant)"
        },
        prepare=_omnifold_prepare,
        load=_omnifold_load,
        fold=_omnifold_fold,
        need=_omnifold_need,
        folds=("points",),
        max_reward=None,
        baseline=True,
        must_beat_baseline=True,
        # the score is iteration 1's step 1: the iterations and the histogram do not enter it
        fixed=(
            "mc_gen",
            "mc_reco",
            "data_reco",
            "truth",
            "iterations",
            "bins",
            "range",
            "quantiles",
            "replicas",
        ),
        overrides=replicas_per_trial,
    )
)


# -- solve.equation, solve.bounce --------------------------------------------------------------------
def _solver_prepare(hyper, training, inputs: dict[str, xr.Dataset]) -> tuple[dict[str, Any], None]:
    return {}, None


def _solver_load(pieces: dict[str, Any]) -> Loaded:
    return Loaded({}, 0)


def _solver_config(training, held: np.ndarray):
    """The op's settings, solved from seed + fold (each fold an independent solve)."""
    import dataclasses

    return dataclasses.replace(training.config(), seed=training.seed + int(np.flatnonzero(held)[0]))


def _equation_fold(arrays, training, held: np.ndarray, hyper, metric: str) -> FoldScore:
    from ..kernels.nn_solvers import solve_on_grid

    out = solve_on_grid(training.equation, _solver_config(training, held), training.n_grid)
    result = out["result"]
    if metric == "max_error":
        error = np.abs(out["solution"][result.kept].mean(0) - out["exact"]).max()
        value = float(error / np.abs(out["exact"]).max())
    else:
        value = float(np.mean(result.best_val[result.kept]))
    return FoldScore(
        value if math.isfinite(value) else math.inf,
        float(result.kept.mean()),
        stopping_fraction(result, training.epochs),
    )


# The bounce's action enters the tunnelling rate as exp(-S3/T) with S3/T ~ 140 at nucleation: an
# action whose replicas spread by 0.5% (the op's action_std / action_mean) leaves S3/T uncertain
# by 0.7, the rate by a factor of 2, and the solve has not settled the answer. Measured on the
# test potential (width 10, 300 epochs, 3 replicas, polished; seeds 0-7): lr 0.001 - 0.005 spread
# 0.00% - 0.08% with S 0.1% below CosmoTransitions'; lr = 10 spread 0.16% - 2.7% (7 of 8 seeds
# above 0.5%) with S 3.7% - 6.2% high, at held-out residuals (5.5e-5 - 9.1e-5) that overlap the
# good ones' (5.5e-5 - 6.1e-5): the residual after the op's least-squares polish cannot tell them
# apart, and the spread understates the error (a trial that passes it is not proven right).
ACTION_SPREAD_LIMIT = 0.005


def action_spread(action: np.ndarray) -> float:
    """Relative spread of the replicas' actions: solve.bounce's action_std / |action_mean|."""
    return float(np.std(action, ddof=1) / abs(np.mean(action))) if action.size > 1 else 0.0


def _bounce_fold(arrays, training, held: np.ndarray, hyper, metric: str) -> FoldScore:
    """Every potential solved by the op's kernel from the fold's seed, scored by `metric`; the
    fold fails where the replicas leave a potential's action undetermined (ACTION_SPREAD_LIMIT),
    which the residual after the op's least-squares polish does not show."""
    from ..kernels.bounce import QuarticPotential, solve_bounce

    config, values, kept, epochs, spreads = _solver_config(training, held), [], [], [], []
    for p in training.potentials:
        out = solve_bounce(QuarticPotential(p.c2, p.c3, p.c4), config, n_profile=training.n_profile)
        result = out["result"]
        spreads.append(action_spread(out["action"]))
        if metric == "residual":
            values.append(np.mean(result.best_val))
        else:
            values.append(np.mean(np.abs(out["action"] - out["action_derrick"]) / np.abs(out["action"])))
        kept.append(result.kept.mean())
        epochs.append(stopping_fraction(result, training.epochs))
    value, worst = float(np.mean(values)), int(np.argmax(spreads))
    failure = (
        f"potential {worst}: the replicas' actions spread {spreads[worst]:.2%} of the action, above "
        f"{ACTION_SPREAD_LIMIT:.1%} (a tunnelling rate undetermined by more than a factor of 2)"
        if not spreads[worst] <= ACTION_SPREAD_LIMIT
        else ""
    )
    return FoldScore(
        value if math.isfinite(value) else math.inf,
        float(np.mean(kept)),
        float(np.mean(epochs)),
        failure=failure,
    )


def _solver_need(hyper, training, inputs: dict[str, xr.Dataset], output: xr.Dataset) -> int:
    from .solve import EQUATION_DOMAINS

    dims = len(EQUATION_DOMAINS[training.equation]) if hasattr(training, "equation") else 1
    rows = (1 + 2 * dims) * training.n_collocation**dims
    grid = getattr(training, "n_grid", getattr(training, "n_profile", 1)) ** dims
    return 2 * needs.ensemble_training_bytes(training.replicas, [dims, *training.hidden, 1], rows) + (
        4 * training.replicas * grid * needs.FLOAT64
    )


# a solve whose error is 10% of the solution, or whose mean-square residual (or Derrick mismatch)
# is 0.01, has failed: measured on ode1, good settings reach < 1e-4 and < 1e-6, lr = 10 reached
# 0.2 - 0.3 and 4 - 22
SOLVER = {  # what both solvers' adapters share: no data, folds by seeds, the failure limits
    "prepare": _solver_prepare,
    "load": _solver_load,
    "need": _solver_need,
    "data": False,
    "folds": ("seeds",),
    "max_reward": {"max_error": 0.1, "residual": 0.01, "derrick": 0.01},
    "fixed": ("equation", "potentials", "n_grid", "n_profile", "replicas"),
    "overrides": replicas_per_trial,
}
register_adapter(
    Adapter(
        op="solve.equation",
        metrics={
            "max_error": "max |replica mean - analytic solution| on the output grid over max |solution|",
            "residual": "mean squared equation residual on held-out collocation points (cell midpoints)",
        },
        fold=_equation_fold,
        **SOLVER,
    )
)
register_adapter(
    Adapter(
        op="solve.bounce",
        metrics={
            "residual": "mean squared scaled bounce-equation residual on held-out collocation radii",
            "derrick": "Derrick's mismatch |S - 2T/3| / |S| of the action (0 at a true bounce)",
        },
        fold=_bounce_fold,
        **SOLVER,
    )
)


# -- training ops a scan refuses -------------------------------------------------------------------
refuse(
    "eels.eelsfitter_v1_train",
    "it reproduces the 2021 EELSfitter v1 method with that method's own settings (issue 17): "
    "tuned settings would no longer be v1, and its targets are binned pseudo-points with no "
    "held-out spectra to score; scan eels.train_zlp instead",
)
refuse(
    "eels.eelsfitter_v1",
    "it subtracts a trained v1 model and fits onsets; it trains nothing itself "
    "(see eels.eelsfitter_v1_train)",
)
refuse(
    "eels.fit_bandgap",
    "it is a per-pixel least-squares fit with no network or training params: nothing to scan, and "
    "no held-out data (each pixel's onset is fitted to that pixel alone)",
)
