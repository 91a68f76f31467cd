"""What `replicas.hyperopt` needs to know of each training op it can scan: one adapter per op.

An adapter says how to read the op's inputs once per scan (lazily, at build time), what the
units are that folds split (points, jets, spectra), how to train one fold with a trial's params
(all the trial's replicas in one batched job, through the op's own kernels) and how to score the
held-out fold: lower is better, with the metric's name stored in the output. The scan itself
(Optuna, the study in the lake, penalties, the output) knows nothing of any op.

This module holds the registry and the two chi2 adapters (replicas.train, pdf.fit: held-out
chi2/n against the central data with the experimental covariance); hyperopt_workloads.py adds
eels.train_zlp, lhc.train_classifier, lhc.anomaly_score and amp.train; hyperopt_physics.py
calo.train_flow, lhc.eft_train, lhc.omnifold, solve.equation, solve.bounce and the refusals.
Each adapter trains through the op's own public function (the one the op calls), never a copy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from ..errors import OpError
from . import needs
from .core import as_delayed, require_variables
from .ensembles import REPLICA

CHI2_MAX_REWARD = 3.0  # a held-out chi2/n above 3 is a failed fit, not a poor setting


@dataclass(frozen=True)
class FoldScore:
    """One fold of one trial: the held-out metric (lower is better), the kept fraction of the
    replicas, the mean stopping epoch over the epoch budget, the metric of a constant
    prediction on the same fold (nan where the adapter has none), the margin by which the
    score must beat it to count as better (two standard errors of the paired per-unit
    difference, where the adapter measures it; 0: any amount; the scan also takes the folds'
    scatter, hyperopt.baseline_margin), and why the fold failed a check of the op's own output
    beside the score ('' where it passed or the adapter has none): a failed fold fails its trial."""

    score: float
    kept: float
    epochs: float
    baseline: float = math.nan
    margin: float = 0.0
    failure: str = ""


@dataclass(frozen=True)
class Loaded:
    """The op's data in memory, once per scan: arrays for the folds, the number of units folds
    split, and a stratum per unit (folds split each stratum evenly) or None."""

    arrays: dict[str, Any]
    n_units: int
    strata: np.ndarray | None = None


@dataclass(frozen=True)
class Adapter:
    """How replicas.hyperopt scans one training op.

    prepare(hyper, training, inputs) -> (lazy pieces, units known at build time or None): reads
    the step's inputs (`data` plus `inputs`) without computing. load(pieces) -> Loaded, in the
    scan task. fold(arrays, training, held, hyper, metric) -> FoldScore trains on the units not
    `held` and scores the held ones. need(hyper, training, inputs, output) -> bytes of one fold's
    training (training at the widest searched layers). inputs: the step's inputs besides `data` (read
    only where `data`). metrics: name -> what it is; the first is
    the default. baseline: folds also score a constant prediction (reported), which a trial
    must beat when must_beat_baseline. fixed: params that shape the data read once per scan, or
    that every trial overrides, so cannot be searched.
    """

    op: str
    metrics: dict[str, str]
    prepare: Callable[..., tuple[dict[str, Any], int | None]]
    load: Callable[[dict[str, Any]], Loaded]
    fold: Callable[..., FoldScore]
    need: Callable[..., int]
    inputs: tuple[str, ...] = ()
    data: bool = True  # reads the step's `data` input (the solvers read none)
    folds: tuple[str, ...] = ("points", "group", "dataset")
    max_reward: float | dict[str, float] | None = CHI2_MAX_REWARD  # a float, or one per metric
    baseline: bool = False
    must_beat_baseline: bool = False
    fixed: tuple[str, ...] = ()
    overrides: Callable[[Any], dict[str, Any]] = field(default=lambda hyper: {})

    @property
    def default_metric(self) -> str:
        return next(iter(self.metrics))


ADAPTERS: dict[str, Adapter] = {}
REFUSED: dict[str, str] = {}  # training ops a scan cannot judge honestly: op -> why


def register_adapter(adapter: Adapter) -> Adapter:
    if adapter.op in ADAPTERS:
        raise ValueError(f"replicas.hyperopt already has an adapter for {adapter.op!r}")
    ADAPTERS[adapter.op] = adapter
    return adapter


def refuse(op: str, why: str) -> None:
    """Record a training op that has no meaningful held-out score, and why (a scan of it is an
    error saying so rather than a reward made up)."""
    REFUSED[op] = why


def adapter_for(op: str) -> Adapter:
    """The op's adapter; a ValueError naming the op and every supported one otherwise (and why,
    for a training op that is refused)."""
    from ..errors import did_you_mean

    if op in REFUSED:
        raise ValueError(f"replicas.hyperopt cannot scan {op}: {REFUSED[op]}")
    if op not in ADAPTERS:
        raise ValueError(
            f"replicas.hyperopt cannot scan op {op!r}{did_you_mean(op, list(ADAPTERS))}; "
            f"supported training ops: {', '.join(sorted(ADAPTERS))}"
        )
    return ADAPTERS[op]


def stratified_folds(strata: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold per unit: a seeded split of each stratum's units into k folds (every fold holds every
    stratum); a stratum with fewer than k units is an error naming it."""
    from ..kernels.kfold import fold_assignment

    strata = np.asarray(strata)
    fold = np.empty(strata.size, np.int64)
    for s in np.unique(strata):
        where = np.flatnonzero(strata == s)
        if where.size < k:
            raise ValueError(f"stratum {s} has {where.size} units for {k} folds; lower k or give more data")
        stream = int(np.random.SeedSequence([seed, int(s)]).generate_state(1)[0])
        fold[where] = (fold_assignment(where.size, k, stream) + int(s)) % k  # rotated: sizes even out
    return fold


def widest(training, space: dict) -> Any:
    """The training params with every searched hidden width at its dimension's top."""
    widths = [int(d.high) for p, d in space.items() if p.startswith("hidden.") and d.high is not None]
    if not widths:
        return training
    return training.model_copy(update={"hidden": [max([*widths, *training.hidden])] * len(training.hidden)})


def no_checkpoints(hyper) -> dict[str, Any]:
    """What every trial of an op overrides: no training checkpoints (a trial is short and reruns whole)."""
    return {"checkpoint_every": None}


def stopping_fraction(result, epochs: int) -> float:
    return float(np.mean(result.stopping_epoch) / epochs)


# -- replicas.train and pdf.fit: held-out chi2/n ---------------------------------------------------
CHI2_METRICS = {"chi2": "held-out chi2/n against the central data (experimental covariance)"}


def _chi2_prepare(hyper, training, inputs: dict[str, xr.Dataset]) -> tuple[dict[str, Any], int]:
    data = inputs["data"]
    require_variables(data, [hyper.target, hyper.covariance, hyper.central])
    target = data[hyper.target]
    if target.ndim != 2 or target.dims[0] != REPLICA:
        raise OpError(f"target {hyper.target!r} must have dims ({REPLICA!r}, point), found {target.dims}")
    point = target.dims[1]
    n, r = target.sizes[point], target.sizes[REPLICA]
    if r < hyper.replicas:
        raise OpError(f"replicas: {hyper.replicas} per trial, but the input has {r} replicas")
    pieces = {
        "target": as_delayed(target.data),
        "covariance": as_delayed(data[hyper.covariance].data),
        "central": as_delayed(data[hyper.central].data),
    }
    if hyper.op == "pdf.fit":
        theory = inputs["theory"]
        if "fk" not in theory:
            raise OpError("op: pdf.fit needs the FK tables: give the step a `theory` input (pdf.fk_tables)")
        if theory.sizes.get("x_grid") != training.n_x:
            raise OpError(
                f"the FK tables have {theory.sizes.get('x_grid')} x nodes, the fit's n_x is "
                f"{training.n_x}: give both the same grid"
            )
        from .pdf_fit import fits_gluon

        pieces["fk"] = as_delayed(theory["fk"].data)
        pieces["fitted_gluon"] = fits_gluon(training, theory["fk"].attrs)  # as pdf.fit decides it
    else:
        from .replicas import feature_columns

        for i, f in enumerate(feature_columns(data, training.features, point)):
            pieces[f"feature_{i}"] = as_delayed(f.data)
    return pieces, n


def _chi2_load(pieces: dict[str, Any]) -> Loaded:
    arrays = {name: np.asarray(pieces[name], float) for name in ("target", "covariance", "central")}
    features = sorted((k for k in pieces if k.startswith("feature_")), key=lambda k: int(k.split("_")[1]))
    if features:
        arrays["features"] = np.stack([np.asarray(pieces[k], float) for k in features], axis=-1)
    if "fk" in pieces:
        arrays["fk"] = np.asarray(pieces["fk"], float)
        arrays["fitted_gluon"] = bool(pieces["fitted_gluon"])
    return Loaded(arrays, arrays["central"].size)


def _chi2_fold(arrays, training, held: np.ndarray, hyper, metric: str) -> FoldScore:
    """Train on the points not held (each replica's own training/validation split of them, in
    one batched job) and take chi2/n of the held points (kernels.kfold)."""
    from ..kernels.kfold import held_out_chi2, pdf_fold, regression_fold
    from ..kernels.pdf_fit import POSITIVITY_TOLERANCE
    from ..kernels.pdf_fk import x_grid
    from ..kernels.replicas import training_masks
    from .pdf_fit import training_config as pdf_config
    from .replicas import training_config as regression_config

    r = hyper.replicas
    groups = arrays["groups"][~held]
    mask = training_masks(
        int((~held).sum()),
        np.unique(groups, return_inverse=True)[1],
        r,
        hyper.training_fraction,
        hyper.seed,
        shared=hyper.split == "shared",
    )
    pdf = hyper.op == "pdf.fit"
    # the op's own settings
    config = pdf_config(training, arrays["fitted_gluon"]) if pdf else regression_config(training)
    common = (arrays["target"][:r], mask, arrays["covariance"], held, config)
    if pdf:
        result = pdf_fold(arrays["fk"], x_grid(training.n_x, training.x_min), *common, POSITIVITY_TOLERANCE)
    else:
        result = regression_fold(arrays["features"], *common)
    cov = arrays["covariance"][np.ix_(held, held)]
    chi2 = held_out_chi2(result.prediction, result.kept, arrays["central"][held], cov, hyper.reward.chi2)
    return FoldScore(chi2, float(result.kept.mean()), stopping_fraction(result, training.epochs))


def _chi2_need(hyper, training, inputs: dict[str, xr.Dataset], output: xr.Dataset) -> int:
    """Inputs whole, and one trial's batched fit on every point at the widest searched layers."""
    points = inputs["data"].sizes.get("point", 1)
    n_in = len(getattr(training, "features", [])) or 2
    sizes = [n_in, *training.hidden, 8]
    return (
        sum(needs.whole_bytes(ds) for ds in inputs.values())
        + needs.chi2_loss_bytes(hyper.replicas, points)
        + needs.ensemble_training_bytes(hyper.replicas, sizes, max(points, 50))
    )


for _op, _inputs in (("replicas.train", ()), ("pdf.fit", ("theory",))):
    register_adapter(
        Adapter(
            op=_op,
            metrics=CHI2_METRICS,
            prepare=_chi2_prepare,
            load=_chi2_load,
            fold=_chi2_fold,
            need=_chi2_need,
            inputs=_inputs,
            fixed=("features", "target", "mask", "covariance", "checkpoint_every")
            if _op == "replicas.train"
            else ("checkpoint_every",),
            overrides=no_checkpoints,
        )
    )
