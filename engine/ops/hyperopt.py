"""`replicas.hyperopt`: an Optuna scan of a replica training op's params with a k-fold reward.

NNPDF chooses architecture, optimiser and learning rate by a hyperparameter scan whose reward is
a k-fold figure (kernels/kfold.py): each trial trains its replicas (~10, one batched job through
the replica core) once per fold with that fold held out, and is judged by the held-out chi2/n.
The scan is a TPE search (Optuna) whose study lives in the lake: an SQLite file copied to the
step's checkpoint folder after every trial (ops/hyperopt_study.py), so an interrupted run resumes
where it stopped. The sampler is re-seeded from (seed, finished trials) before each trial, so a
resumed scan draws what an uninterrupted one would have. The searched params are dotted paths
into the training op's params (ops/hyperopt_space.py).

Output: one row per trial (params, per-fold chi2/n, kept fraction, time, reward, ok), the best
trial's index and its recipe fragment (`winner_fragment(dataset)` reads it back). A trial that
diverged, kept no replica or scored above `max_reward` is marked failed and is never crowned:
a scan whose every trial fails has best_trial = -1.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr
from pydantic import Field, ValidationError, model_validator

from ..bounds import Params as _Params
from ..bounds import Repeats, Replicas, Seed
from ..errors import OpError, did_you_mean
from ..key_numbers import mark
from ..registry import StepContext, get_op, register_op
from . import needs
from .core import as_delayed, require_variables
from .ensembles import REPLICA
from .hyperopt_space import Dimension, apply_values, check_path, training_defaults
from .hyperopt_study import run_scan

log = logging.getLogger("engine.hyperopt")
FRAGMENT_BYTES = 8192  # the winner's recipe fragment, UTF-8, NUL padded (zarr v3 has no strings)


class FoldParams(_Params):
    k: int = Field(4, ge=2, le=100, description="number of folds")
    by: Literal["points", "group", "dataset"] = Field(
        "points",
        description="points: a seeded split of points; group: whole groups (a variable, "
        "e.g. dataset_index) dealt to folds; dataset: the folds named in `datasets`",
    )
    group: str | None = Field(None, description="by: group: the variable labelling each point's group")
    datasets: list[list[str]] | None = Field(
        None, description="by: dataset: each fold's dataset names (attrs 'datasets' of the input)"
    )
    seed: Seed = 0

    @model_validator(mode="after")
    def _by(self) -> FoldParams:
        if self.by == "group" and self.group is None:
            raise ValueError("by: group needs `group`, the variable naming each point's group")
        if self.by == "dataset":
            if not self.datasets:
                raise ValueError("by: dataset needs `datasets`, a list of folds of dataset names")
            empty = [i for i, fold in enumerate(self.datasets) if not fold]
            if empty:
                raise ValueError(
                    f"fold {empty[0]} of `datasets` is empty; expected at least one dataset name per fold"
                )
        return self


class RewardParams(_Params):
    statistic: Literal["mean", "max"] = Field("mean", description="over folds")
    chi2: Literal["central", "average"] = Field(
        "central",
        description="central: chi2/n of the kept replicas' mean; average: mean of the "
        "replicas' own chi2/n (adds their spread)",
    )
    min_kept_fraction: float = Field(0.5, ge=0, le=1)
    kept_penalty: float = Field(10.0, ge=0, description="per unit of kept fraction below the minimum")
    epochs_penalty: float = Field(0.0, ge=0, description="times mean stopping epoch / epochs")
    time_budget_s: float | None = Field(None, gt=0, description="seconds a trial may take unpenalised")
    time_penalty: float = Field(1.0, ge=0, description="times the relative overrun of the budget")
    max_reward: float = Field(3.0, gt=0, description="a trial above this has failed")


class HyperoptParams(_Params):
    op: Literal["replicas.train", "pdf.fit"] = Field(description="the training op whose params are scanned")
    base: dict[str, Any] = Field(default_factory=dict, description="the training op's params kept fixed")
    space: dict[str, Dimension] = Field(
        min_length=1,
        description="searched params by dotted path: optimiser.lr, stopping.patience, "
        "hidden.0 (one layer's width), hidden.* (every layer's width)",
    )
    folds: FoldParams = FoldParams()
    reward: RewardParams = RewardParams()
    trials: Repeats = Field(20, ge=1)
    startup_trials: Repeats = Field(5, ge=1, description="random trials before TPE models the rewards")
    replicas: Replicas = Field(10, ge=2, description="replicas per trial (the first of the input's)")
    training_fraction: float = Field(0.75, gt=0, lt=1, description="of each fold's fitted points")
    split: Literal["shared", "per_replica"] = "shared"
    central: str = Field("y", description="data the held-out chi2 compares with (1-D over points)")
    target: str = "pseudodata"
    covariance: str = "covariance"
    seed: Seed = 0

    @model_validator(mode="after")
    def _space(self) -> HyperoptParams:
        from .pdf_fit import FitParams
        from .replicas import TrainParams

        model = {"replicas.train": TrainParams, "pdf.fit": FitParams}[self.op]
        for path in self.space:
            check_path(model, path, self.op)
        return self


# -- params paths -----------------------------------------------------------------------------------
def _name(path: str) -> str:
    return path.replace(".*", "_all").replace(".", "_")


def _variable(path: str) -> str:
    """The output variable of a searched param's value per trial."""
    return "p_" + _name(path)


def winner_fragment(dataset: xr.Dataset) -> str:
    """The best trial's recipe fragment (YAML) from a replicas.hyperopt output; '' if none passed."""
    raw = np.asarray(dataset["winner_fragment"].values, np.uint8).tobytes()
    return raw.rstrip(b"\0").decode("utf-8")


# -- the scan (one dask task) ------------------------------------------------------------------------
def _trainer_config(op: str, training):
    from ..kernels.optim import OptimiserConfig
    from ..kernels.regression import RegressionConfig
    from ..kernels.train import StoppingConfig
    from .pdf_fit import _config

    if op == "pdf.fit":  # a trial is short and reruns whole: no training checkpoints
        return dataclasses.replace(_config(training), checkpoint_every=None)
    return RegressionConfig(
        tuple(training.hidden),
        tuple(training.activations),
        training.epochs,
        OptimiserConfig(**training.optimiser.model_dump()),
        StoppingConfig(**training.stopping.model_dump()),
        training.validation_every,
        training.seed,
        training.device,
        None,
    )


def evaluate_trial(
    values: dict[str, Any], arrays: dict[str, np.ndarray], fold: np.ndarray, params: HyperoptParams
) -> dict[str, Any]:
    """Train the trial's replicas once per fold and score them (kernels.kfold)."""
    from ..kernels.kfold import RewardConfig, held_out_chi2, pdf_fold, regression_fold, trial_reward
    from ..kernels.pdf_fit import POSITIVITY_TOLERANCE
    from ..kernels.replicas import training_masks
    from .pdf_fit import _grid

    spec = get_op(params.op)
    start = time.perf_counter()
    try:
        training = spec.params.model_validate(apply_values(params.base, values, training_defaults(params.op)))
    except (ValidationError, ValueError) as exc:  # e.g. a sampled patience the model refuses
        return {
            "chi2": [math.inf] * params.folds.k,
            "kept": [0.0] * params.folds.k,
            "epochs": [1.0] * params.folds.k,
            "seconds": 0.0,
            "reward": math.inf,
            "ok": False,
            "why": f"invalid params: {exc}",
        }
    config = _trainer_config(params.op, training)
    r = params.replicas
    chi2, kept, epochs = [], [], []
    for f in range(params.folds.k):
        held = fold == f
        groups = arrays["groups"][~held]
        mask = training_masks(
            int((~held).sum()),
            np.unique(groups, return_inverse=True)[1],
            r,
            params.training_fraction,
            params.seed,
            shared=params.split == "shared",
        )
        common = (arrays["target"][:r], mask, arrays["covariance"], held, config)
        if params.op == "pdf.fit":
            result = pdf_fold(arrays["fk"], _grid(training), *common, POSITIVITY_TOLERANCE)
        else:
            result = regression_fold(arrays["features"], *common)
        cov = arrays["covariance"][np.ix_(held, held)]
        chi2.append(
            held_out_chi2(result.prediction, result.kept, arrays["central"][held], cov, params.reward.chi2)
        )
        kept.append(float(result.kept.mean()))
        epochs.append(float(np.mean(result.stopping_epoch) / training.epochs))
    seconds = time.perf_counter() - start
    reward_config = RewardConfig(
        params.reward.statistic,
        params.reward.min_kept_fraction,
        params.reward.kept_penalty,
        params.reward.epochs_penalty,
        params.reward.time_budget_s,
        params.reward.time_penalty,
        params.reward.max_reward,
    )
    reward, ok, why = trial_reward(np.array(chi2), np.array(kept), np.array(epochs), seconds, reward_config)
    return {
        "chi2": chi2,
        "kept": kept,
        "epochs": epochs,
        "seconds": seconds,
        "reward": reward,
        "ok": ok,
        "why": why,
    }


def _fragment(params: HyperoptParams, values: dict[str, Any]) -> str:
    import yaml

    merged = apply_values(params.base, values, training_defaults(params.op))
    text = yaml.safe_dump({"op": params.op, "params": merged}, sort_keys=False, default_flow_style=None)
    return "# replicas.hyperopt winner\n" + text


def _scan(
    target, covariance, central, features, fk, groups, fold, params: HyperoptParams, context: StepContext
) -> dict[str, np.ndarray]:
    from ..kernels.kfold import check_folds, fold_assignment

    arrays = {
        "target": np.asarray(target, float),
        "covariance": np.asarray(covariance, float),
        "central": np.asarray(central, float),
    }
    n = arrays["central"].size
    if features is not None:
        arrays["features"] = np.stack([np.asarray(f, float) for f in features], axis=-1)
    if fk is not None:
        arrays["fk"] = np.asarray(fk, float)
    arrays["groups"] = np.zeros(n, np.int64) if groups is None else np.asarray(groups)
    if fold is None:  # by group: known only now
        fold = fold_assignment(n, params.folds.k, params.folds.seed, arrays["groups"])
    check_folds(fold, params.folds.k)
    trials = run_scan(arrays, np.asarray(fold), params, context, evaluate_trial)
    k, t = params.folds.k, len(trials)
    out: dict[str, Any] = {
        "reward": np.array([_number(a["reward"]) for _, a in trials]),
        "ok": np.array([bool(a["ok"]) for _, a in trials]),
        "seconds": np.array([_number(a["seconds"]) for _, a in trials]),
        "chi2_held_out": np.array([[_number(c) for c in a["chi2"]] for _, a in trials]).reshape(t, k),
        "kept_fraction": np.array([a["kept"] for _, a in trials], float).reshape(t, k),
        "stopping_fraction": np.array([a["epochs"] for _, a in trials], float).reshape(t, k),
        "fold_points": np.bincount(fold[fold >= 0], minlength=k).astype(np.int64),
    }
    for path in params.space:
        values = np.array([float(p[path]) for p, _ in trials])
        order = np.argsort(values, kind="stable")  # a profile: reward against the param, sorted
        out[_variable(path)] = values
        out[f"reward_vs_{_name(path)}"] = np.where(np.isfinite(out["reward"]), out["reward"], np.nan)[order]
        out[_name(path)] = values[order]
    ok = np.flatnonzero(out["ok"])
    best = int(ok[np.argmin(out["reward"][ok])]) if ok.size else -1
    out["best_trial"] = np.array(best, np.int64)
    out["rank"] = np.empty(t, np.int64)  # 0 = best; failed trials after every passing one
    out["rank"][np.lexsort((out["reward"], ~out["ok"]))] = np.arange(t)
    text = (
        ""
        if best < 0
        else _fragment(
            params,
            {
                path: dim.choices[int(trials[best][0][path])]
                if dim.choices is not None
                else trials[best][0][path]
                for path, dim in params.space.items()
            },
        )
    )
    raw = text.encode("utf-8")[:FRAGMENT_BYTES]
    out["winner_fragment"] = np.frombuffer(raw.ljust(FRAGMENT_BYTES, b"\0"), np.uint8).copy()
    if best < 0:
        log.warning("%s: every one of %d trials failed; nothing is crowned", context.step_id, t)
    return out


def _number(value) -> float:
    return math.inf if value is None else float(value)


# -- the op --------------------------------------------------------------------------------------------
def _fold_of_datasets(params: HyperoptParams, sources: list[xr.Dataset], n: int) -> np.ndarray:
    """Fold index per point from named datasets (ingest attrs); -1 = never held out."""
    source = next((s for s in sources if s.attrs.get("datasets")), None)
    if source is None:
        raise OpError(
            "folds by: dataset need the inputs' 'datasets'/'dataset_points' attributes "
            "(written by `ingest nnpdf`); found none: use by: group with dataset_index"
        )
    names, counts = list(source.attrs["datasets"]), np.asarray(source.attrs["dataset_points"], int)
    if counts.sum() != n:
        raise OpError(f"the 'dataset_points' attribute counts {counts.sum()} points, the data have {n}")
    starts = np.concatenate([[0], np.cumsum(counts)])
    fold = np.full(n, -1, np.int64)
    for f, fold_names in enumerate(params.folds.datasets or []):
        for name in fold_names:
            if name not in names:
                raise OpError(
                    f"fold {f}: dataset {name!r} is not in the data{did_you_mean(name, names)}; "
                    f"datasets: {', '.join(names)}"
                )
            i = names.index(name)
            fold[starts[i] : starts[i + 1]] = f
    return fold


def _static_folds(params: HyperoptParams, sources: list[xr.Dataset], n: int) -> np.ndarray | None:
    from ..kernels.kfold import fold_assignment

    if params.folds.by == "dataset":
        if len(params.folds.datasets or []) != params.folds.k:
            raise OpError(
                f"folds: k = {params.folds.k} but `datasets` lists "
                f"{len(params.folds.datasets or [])} folds; expected one list per fold"
            )
        return _fold_of_datasets(params, sources, n)
    if params.folds.by == "points":
        try:
            return fold_assignment(n, params.folds.k, params.folds.seed)
        except ValueError as exc:
            raise OpError(f"folds: {exc}") from None
    return None


def _training_check(params: HyperoptParams):
    """The training op's params at the first value of every dimension: the base must be valid."""
    values = {
        path: dim.choices[0] if dim.choices is not None else (int(dim.low) if dim.integer else dim.low)
        for path, dim in params.space.items()
    }
    try:
        return get_op(params.op).params.model_validate(
            apply_values(params.base, values, training_defaults(params.op))
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise OpError(f"base params of {params.op} are not valid at {where!r}: {first['msg']}") from None
    except ValueError as exc:
        raise OpError(f"space: {exc}") from None


def _need(params: HyperoptParams, inputs: dict[str, xr.Dataset], output: xr.Dataset) -> int:
    """Inputs whole, and one trial's batched fit on every point at the widest searched layers."""
    data = inputs["data"]
    points = data.sizes.get("point", 1)
    widths = [int(d.high) for p, d in params.space.items() if p.startswith("hidden") and d.high]
    hidden = list(params.base.get("hidden", [25, 20]))
    if widths:
        hidden = [max([*widths, *hidden])] * len(hidden)
    sizes = [2, *hidden, 8]
    return (
        sum(needs.whole_bytes(ds) for ds in inputs.values())
        + needs.chi2_loss_bytes(params.replicas, points)
        + needs.ensemble_training_bytes(params.replicas, sizes, max(points, 50))
    )


@register_op(
    "replicas.hyperopt",
    params=HyperoptParams,
    inputs=("data",),
    optional_inputs=("theory",),
    wants_context=True,
    memory=needs.TorchNeed(_need),
)
def hyperopt(
    params: HyperoptParams, data: xr.Dataset, context: StepContext, theory: xr.Dataset | None = None
) -> xr.Dataset:
    """Hyperparameter scan of a replica training op (Optuna TPE) with a k-fold held-out chi2 reward.

    data: replicas.pseudodata output (pseudodata, covariance and the central data); theory: the
    FK tables when op is pdf.fit. Output over `trial` (and `fold`): p_<param> values, chi2_held_out,
    kept_fraction, stopping_fraction, seconds, reward (lower is better), ok, rank (0 = best);
    best_trial (-1 when every trial failed), winner_fragment (UTF-8 bytes of the winner's recipe
    fragment) and reward_vs_<param> over by_<param>: the reward against the param's sorted values.
    """
    require_variables(data, [params.target, params.covariance, params.central])
    target = data[params.target]
    if target.ndim != 2 or target.dims[0] != REPLICA:
        raise OpError(f"target {params.target!r} must have dims ({REPLICA!r}, point), found {target.dims}")
    point = target.dims[1]
    n, r = target.sizes[point], target.sizes[REPLICA]
    if r < params.replicas:
        raise OpError(f"replicas: {params.replicas} per trial, but the input has {r} replicas")
    training = _training_check(params)
    features = fk = groups = None
    if params.op == "pdf.fit":
        if theory is None or "fk" not in theory:
            raise OpError("op: pdf.fit needs the FK tables: give the step a `theory` input (pdf.fk_tables)")
        if theory.sizes.get("x_grid") != training.n_x:
            raise OpError(
                f"the FK tables have {theory.sizes.get('x_grid')} x nodes, the fit's n_x is "
                f"{training.n_x}: give both the same grid"
            )
        fk = as_delayed(theory["fk"].data)
    else:
        from .replicas import _features

        features = [as_delayed(f.data) for f in _features(data, training.features, point)]
    if params.folds.by == "group":
        require_variables(data, [params.folds.group])
        groups = as_delayed(data[params.folds.group].data)
    fold = _static_folds(params, [data] + ([theory] if theory is not None else []), n)
    result = dask.delayed(_scan, pure=True)(
        as_delayed(target.data),
        as_delayed(data[params.covariance].data),
        as_delayed(data[params.central].data),
        features,
        fk,
        groups,
        fold,
        params,
        context,
    )
    t, k = params.trials, params.folds.k
    layout = {
        "reward": (("trial",), (t,), float),
        "ok": (("trial",), (t,), bool),
        "seconds": (("trial",), (t,), float),
        "chi2_held_out": (("trial", "fold"), (t, k), float),
        "kept_fraction": (("trial", "fold"), (t, k), float),
        "stopping_fraction": (("trial", "fold"), (t, k), float),
        "fold_points": (("fold",), (k,), np.int64),
        "best_trial": ((), (), np.int64),
        "rank": (("trial",), (t,), np.int64),
        "winner_fragment": (("fragment_byte",), (FRAGMENT_BYTES,), np.uint8),
    }
    layout |= {_variable(p): (("trial",), (t,), float) for p in params.space}
    out = xr.Dataset(
        {
            name: (dims, da.from_delayed(result[name], shape, dtype))
            for name, (dims, shape, dtype) in layout.items()
        },
        coords={"trial": np.arange(t), "fold": np.arange(k)},
    )
    for path, dim in params.space.items():
        name, attrs = (
            _name(path),
            {
                "long_name": path,
                "log": int(dim.log),
                **({"choices": json.dumps(dim.choices)} if dim.choices else {}),
            },
        )
        out[_variable(path)].attrs = attrs
        # reward against the param's values in increasing order (failed trials NaN): a line plot
        # with `x: <name>` shows which values generalise
        out = out.assign_coords({name: (f"by_{name}", da.from_delayed(result[name], (t,), float), attrs)})
        out[f"reward_vs_{name}"] = (
            f"by_{name}",
            da.from_delayed(result[f"reward_vs_{name}"], (t,), float),
            {"long_name": "reward (held-out chi2/n)"},
        )
    out["winner_fragment"].attrs = {"encoding": "utf-8, NUL padded; engine.ops.hyperopt.winner_fragment"}
    out["reward"].attrs = {"long_name": f"{params.reward.statistic} held-out chi2/n over folds + penalties"}
    out.attrs = {
        "training_op": params.op,
        "search_space": json.dumps({p: d.model_dump(exclude_defaults=True) for p, d in params.space.items()}),
    }
    mark(out["ok"], "count_false", label="failed trials")
    return out
