"""`replicas.hyperopt`: an Optuna scan of a training op's params with a k-fold reward.

NNPDF chooses architecture, optimiser and learning rate by a hyperparameter scan whose reward is
a k-fold figure (kernels/kfold.py): each trial trains its replicas (~10, one batched job through
the replica core) once per fold with that fold held out, and is judged by the held-out score.
What a fold is and how it is scored belongs to the training op's adapter (hyperopt_adapters.py:
held-out chi2/n for replicas.train, pdf.fit and eels.train_zlp; cross-entropy or 1 - AUC for
lhc.train_classifier; Gaussian NLL or squared error of ln |M|^2 for amp.train; and the scores of
hyperopt_physics.py for calo.train_flow, lhc.eft_train, lhc.omnifold and the solvers). A training
op with no meaningful held-out score is refused with the reason (hyperopt_adapters.refuse).
The scan is a TPE search (Optuna) whose study lives in the lake: an SQLite file copied to the
step's checkpoint folder after every trial (ops/hyperopt_study.py), so an interrupted run resumes
where it stopped. The sampler is re-seeded from (seed, finished trials) before each trial, so a
resumed scan draws what an uninterrupted one would have. The searched params are dotted paths
into the training op's params (ops/hyperopt_space.py).

Output: one row per trial (params, per-fold score, kept fraction, time, reward, ok), the best
trial's index and its recipe fragment (`winner_fragment(dataset)` reads it back). A trial that
diverged, kept no replica, scored above `max_reward`, failed its adapter's check of what the op
would output (a fold's FoldScore.failure), or, where the adapter has a constant prediction,
beat it by no more than the noise (`baseline_margin`) is marked failed and is never crowned: a
scan whose every trial fails has best_trial = -1.
"""

from __future__ import annotations

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
from . import (
    hyperopt_physics,  # noqa: F401  (registers the other training ops' adapters and refusals)
    hyperopt_workloads,  # noqa: F401  (registers the workloads' adapters)
    needs,
)
from .core import as_delayed, require_variables
from .hyperopt_adapters import adapter_for, stratified_folds, widest
from .hyperopt_space import Dimension, apply_values, check_path, training_defaults
from .hyperopt_study import run_scan

log = logging.getLogger("engine.hyperopt")
FRAGMENT_BYTES = 8192  # the winner's recipe fragment, UTF-8, NUL padded (zarr v3 has no strings)


class FoldParams(_Params):
    k: int = Field(4, ge=2, le=100, description="number of folds")
    by: Literal["points", "group", "dataset", "seeds"] | None = Field(
        None,
        description="points: a seeded split of the op's units (points; jets; each cluster's "
        "sampled spectra; showers; events); group: whole groups (a variable along the units, e.g. "
        "dataset_index) dealt to folds; dataset: the folds named in `datasets`; seeds: k "
        "independent solves from seed + fold (solve.*: no data to split); none: the op's first",
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
    metric: str | None = Field(
        None,
        description="the held-out score (lower is better); none: the op's default. chi2 "
        "(replicas.train, pdf.fit, eels.train_zlp); bce or one_minus_auc (lhc.train_classifier); "
        "one_minus_auc or background_mse (lhc.anomaly_score); nll or mse (amp.train); nll "
        "(calo.train_flow); cross_entropy (lhc.eft_train); step1_bce (lhc.omnifold); max_error or "
        "residual (solve.equation); residual or derrick (solve.bounce)",
    )
    chi2: Literal["central", "average"] = Field(
        "central",
        description="central: the score of the kept replicas' mean; average: the mean of the "
        "replicas' own scores (adds their spread; amp.train scores its ensemble whole)",
    )
    min_kept_fraction: float = Field(0.5, ge=0, le=1)
    kept_penalty: float = Field(10.0, ge=0, description="per unit of kept fraction below the minimum")
    epochs_penalty: float = Field(0.0, ge=0, description="times mean stopping epoch / epochs")
    time_budget_s: float | None = Field(None, gt=0, description="seconds a trial may take unpenalised")
    time_penalty: float = Field(1.0, ge=0, description="times the relative overrun of the budget")
    max_reward: float | None = Field(
        None,
        gt=0,
        description="a trial above this has failed; none: the op's default (chi2: 3; solvers: "
        "max_error 0.1, residual and derrick 0.01; the others: none, but a trial must beat a "
        "constant prediction)",
    )


class HyperoptParams(_Params):
    op: str = Field(
        description="the training op whose params are scanned: replicas.train, pdf.fit, "
        "eels.train_zlp, lhc.train_classifier, lhc.anomaly_score, amp.train, calo.train_flow, "
        "lhc.eft_train, lhc.omnifold, solve.equation, solve.bounce"
    )
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
    replicas: Replicas = Field(
        10,
        ge=2,
        description="replicas per trial, trained in one batched job: the first of the input's "
        "pseudodata (replicas.train, pdf.fit), or the op's `replicas` (the others)",
    )
    training_fraction: float = Field(
        0.75, gt=0, lt=1, description="replicas.train, pdf.fit: of each fold's fitted points"
    )
    split: Literal["shared", "per_replica"] = Field("shared", description="replicas.train, pdf.fit")
    central: str = Field("y", description="replicas.train, pdf.fit: data the held-out chi2 compares with")
    target: str = Field("pseudodata", description="replicas.train, pdf.fit: the replicas' data")
    covariance: str = Field("covariance", description="replicas.train, pdf.fit")
    seed: Seed = 0

    @model_validator(mode="after")
    def _space(self) -> HyperoptParams:
        adapter = adapter_for(self.op)
        for path in self.space:
            check_path(get_op(self.op).params, path, self.op)
            if path.split(".")[0] in adapter.fixed:
                raise ValueError(
                    f"space: {path!r} of {self.op} is set once per scan (it shapes the data read, "
                    f"or every trial overrides it), so it cannot be searched; set it in `base`"
                )
        if self.reward.metric is not None and self.reward.metric not in adapter.metrics:
            raise ValueError(
                f"reward.metric {self.reward.metric!r} is not a metric of {self.op}"
                f"{did_you_mean(self.reward.metric, list(adapter.metrics))}; expected one of "
                f"{', '.join(adapter.metrics)}"
            )
        if self.folds.by is None:  # the op's own kind of fold
            self.folds = self.folds.model_copy(update={"by": adapter.folds[0]})
        if self.folds.by not in adapter.folds:
            raise ValueError(
                f"folds by: {self.folds.by} is not available for {self.op}; expected one of "
                f"{', '.join(adapter.folds)}"
            )
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
def _invalid(params: HyperoptParams, why: str) -> dict[str, Any]:
    k = params.folds.k
    return {
        "score": [math.inf] * k,
        "kept": [0.0] * k,
        "epochs": [1.0] * k,
        "baseline": [math.nan] * k,
        "seconds": 0.0,
        "reward": math.inf,
        "ok": False,
        "why": why,
    }


def baseline_margin(score: np.ndarray, baseline: np.ndarray, margins: np.ndarray, mean: bool) -> float:
    """By how much a trial's fold statistic (mean, or else max) must beat the constant's: two
    standard errors of the gain, the larger of two estimates of its noise. The held-out units'
    (each fold's paired error, `margins`: the noise of the held-out sample alone), and the
    folds' scatter of the gain (baseline - score), which adds the noise of training itself (its
    seeds, a chaotic optimiser): the standard error of a mean of k gains, or one fold's spread
    for the max. With one fold there is no scatter to measure."""
    events = float(np.sqrt(np.sum(margins**2)) / margins.size if mean else margins.max())
    gain = baseline - score
    if gain.size < 2 or not np.all(np.isfinite(gain)):
        return events
    spread = float(np.std(gain, ddof=1))
    return max(events, 2 * (spread / math.sqrt(gain.size) if mean else spread))


def evaluate_trial(
    values: dict[str, Any], arrays: dict[str, np.ndarray], fold: np.ndarray, params: HyperoptParams
) -> dict[str, Any]:
    """Train the trial's replicas once per fold with that fold held out (the op's adapter) and
    turn the held-out scores into the trial's reward (kernels.kfold.trial_reward)."""
    from ..kernels.kfold import RewardConfig, trial_reward

    adapter = adapter_for(params.op)
    start = time.perf_counter()
    try:
        training = _training(params, values)
    except (ValidationError, ValueError) as exc:  # e.g. a sampled patience the model refuses
        return _invalid(params, f"invalid params: {exc}")
    metric = _metric(params)
    folds = [adapter.fold(arrays, training, fold == f, params, metric) for f in range(params.folds.k)]
    seconds = time.perf_counter() - start
    score = np.array([f.score for f in folds])
    baseline = np.array([f.baseline for f in folds])
    max_reward = params.reward.max_reward if params.reward.max_reward is not None else adapter.max_reward
    if isinstance(max_reward, dict):  # the op's limit per metric
        max_reward = max_reward.get(metric)
    reward_config = RewardConfig(
        params.reward.statistic,
        params.reward.min_kept_fraction,
        params.reward.kept_penalty,
        params.reward.epochs_penalty,
        params.reward.time_budget_s,
        params.reward.time_penalty,
        math.inf if max_reward is None else max_reward,
    )
    kept = np.array([f.kept for f in folds])
    reward, ok, why = trial_reward(score, kept, np.array([f.epochs for f in folds]), seconds, reward_config)
    failed = next((f"fold {i}: {f.failure}" for i, f in enumerate(folds) if f.failure), None)
    if ok and failed:  # the adapter's own check of what the op would output (e.g. an undetermined action)
        ok, why = False, failed
    if ok and adapter.must_beat_baseline:  # no better than a constant prediction: failed
        statistic = np.mean if params.reward.statistic == "mean" else np.max
        held, constant = float(statistic(score)), float(statistic(baseline))
        margin = baseline_margin(score, baseline, np.array([f.margin for f in folds]), statistic is np.mean)
        if not held < constant - margin:
            ok, why = (
                False,
                (
                    f"held-out {metric} {held:.4g} no better than a constant's {constant:.4g}"
                    + (f" by more than its noise {margin:.2g}" if margin else "")
                ),
            )
    return {
        "score": score.tolist(),
        "kept": kept.tolist(),
        "epochs": [f.epochs for f in folds],
        "baseline": baseline.tolist(),
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


def _scan(params: HyperoptParams, context: StepContext, fold, groups, **pieces) -> dict[str, np.ndarray]:
    from ..kernels.kfold import check_folds, fold_assignment

    loaded = adapter_for(params.op).load(pieces)
    n, k = loaded.n_units, params.folds.k
    arrays = dict(loaded.arrays)
    arrays["groups"] = np.zeros(n, np.int64) if groups is None else np.asarray(groups)
    if fold is None:  # by group, or units known only now (a stratified split when the adapter has strata)
        if groups is not None:
            fold = fold_assignment(n, k, params.folds.seed, arrays["groups"])
        elif loaded.strata is not None:
            fold = stratified_folds(loaded.strata, k, params.folds.seed)
        else:
            fold = fold_assignment(n, k, params.folds.seed)
    fold = np.asarray(fold)
    check_folds(fold, k)
    trials = run_scan(arrays, fold, params, context, evaluate_trial)
    t = len(trials)
    out: dict[str, Any] = {
        "reward": np.array([_number(a["reward"]) for _, a in trials]),
        "ok": np.array([bool(a["ok"]) for _, a in trials]),
        "seconds": np.array([_number(a["seconds"]) for _, a in trials]),
        "held_out": np.array([[_number(c) for c in a["score"]] for _, a in trials]).reshape(t, k),
        "baseline_held_out": np.array(
            [[math.nan if c is None else float(c) for c in a["baseline"]] for _, a in trials]
        ).reshape(t, k),
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


def _static_folds(params: HyperoptParams, sources: list[xr.Dataset], n: int | None) -> np.ndarray | None:
    """Folds known while building (None: the scan deals them once the units are read)."""
    from ..kernels.kfold import fold_assignment

    if params.folds.by == "dataset":
        if len(params.folds.datasets or []) != params.folds.k:
            raise OpError(
                f"folds: k = {params.folds.k} but `datasets` lists "
                f"{len(params.folds.datasets or [])} folds; expected one list per fold"
            )
        if n is None:
            raise OpError(f"folds by: dataset needs data points; {params.op} has none")
        return _fold_of_datasets(params, sources, n)
    if params.folds.by == "seeds":  # fold f is the solve from seed + f
        return np.arange(params.folds.k)
    if params.folds.by == "points" and n is not None:
        try:
            return fold_assignment(n, params.folds.k, params.folds.seed)
        except ValueError as exc:
            raise OpError(f"folds: {exc}") from None
    return None


def _metric(params: HyperoptParams) -> str:
    return params.reward.metric or adapter_for(params.op).default_metric


def _training(params: HyperoptParams, values: dict[str, Any]):
    """The training op's validated params for one trial: base, the trial's values, and what
    every trial overrides (replicas per trial, no checkpoints)."""
    merged = apply_values(params.base, values, training_defaults(params.op))
    merged |= adapter_for(params.op).overrides(params)
    return get_op(params.op).params.model_validate(merged)


def _training_check(params: HyperoptParams):
    """The training op's params at the first value of every dimension: the base must be valid."""
    values = {
        path: dim.choices[0] if dim.choices is not None else (int(dim.low) if dim.integer else dim.low)
        for path, dim in params.space.items()
    }
    try:
        return _training(params, values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise OpError(f"base params of {params.op} are not valid at {where!r}: {first['msg']}") from None
    except ValueError as exc:
        raise OpError(f"space: {exc}") from None


def _need(params: HyperoptParams, inputs: dict[str, xr.Dataset], output: xr.Dataset) -> int:
    """One fold's training, by the op's adapter, at the widest searched layers."""
    training = widest(_training_check(params), params.space)
    return adapter_for(params.op).need(params, training, inputs, output)


@register_op(
    "replicas.hyperopt",
    params=HyperoptParams,
    inputs=(),
    optional_inputs=("data", "theory", "clusters", "windows"),
    wants_context=True,
    memory=needs.TorchNeed(_need),
)
def hyperopt(
    params: HyperoptParams,
    data: xr.Dataset | None = None,
    context: StepContext | None = None,
    theory: xr.Dataset | None = None,
    clusters: xr.Dataset | None = None,
    windows: xr.Dataset | None = None,
) -> xr.Dataset:
    """Hyperparameter scan of a training op (Optuna TPE) with a k-fold held-out reward.

    data: the training op's main input: replicas.pseudodata output (replicas.train, pdf.fit, with
    theory: the FK tables for pdf.fit), the aligned image (eels.train_zlp, with its clusters and
    windows), the jets (lhc.train_classifier, lhc.anomaly_score), the phase-space sample
    (amp.train), the showers (calo.train_flow), the events (lhc.eft_train), the unfolding
    samples (lhc.omnifold); none for the solvers (solve.equation, solve.bounce). Output over
    `trial` (and `fold`): p_<param> values, held_out (the metric named in its attrs, lower is
    better; baseline_held_out: a constant prediction's, where the op has one), kept_fraction,
    stopping_fraction, seconds, reward, ok, rank (0 = best); best_trial (-1 when every trial
    failed), winner_fragment (UTF-8 bytes of the winner's recipe fragment) and reward_vs_<param>
    over by_<param>: the reward against the param's sorted values.
    """
    adapter = adapter_for(params.op)
    given = {"data": data, "theory": theory, "clusters": clusters, "windows": windows}
    takes = ("data",) * adapter.data + adapter.inputs
    for name, value in given.items():
        if name in takes and value is None:
            raise OpError(f"op: {params.op} needs the input {name!r}; give the step `{name}: <step id>`")
        if name not in takes and value is not None:
            raise OpError(
                f"input {name!r} is not used when scanning {params.op}; it takes "
                f"{', '.join(takes) or 'no input'}"
            )
    inputs = {name: given[name] for name in takes}
    training = _training_check(params)
    pieces, n = adapter.prepare(params, training, inputs)
    groups = None
    if params.folds.by == "group":
        require_variables(data, [params.folds.group])
        if n is not None and data[params.folds.group].shape != (n,):
            raise OpError(
                f"folds: group {params.folds.group!r} must hold one value per unit ({n}), "
                f"found shape {data[params.folds.group].shape}"
            )
        groups = as_delayed(data[params.folds.group].data)
    fold = _static_folds(params, list(inputs.values()), n)
    result = dask.delayed(_scan, pure=True)(params, context, fold, groups, **pieces)
    t, k, metric = params.trials, params.folds.k, _metric(params)
    layout = {
        "reward": (("trial",), (t,), float),
        "ok": (("trial",), (t,), bool),
        "seconds": (("trial",), (t,), float),
        "held_out": (("trial", "fold"), (t, k), float),
        "kept_fraction": (("trial", "fold"), (t, k), float),
        "stopping_fraction": (("trial", "fold"), (t, k), float),
        "fold_points": (("fold",), (k,), np.int64),
        "best_trial": ((), (), np.int64),
        "rank": (("trial",), (t,), np.int64),
        "winner_fragment": (("fragment_byte",), (FRAGMENT_BYTES,), np.uint8),
    }
    if adapter.baseline:
        layout["baseline_held_out"] = (("trial", "fold"), (t, k), float)
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
            {"long_name": f"reward (held-out {metric})"},
        )
    out["winner_fragment"].attrs = {"encoding": "utf-8, NUL padded; engine.ops.hyperopt.winner_fragment"}
    out["reward"].attrs = {"long_name": f"{params.reward.statistic} held-out {metric} over folds + penalties"}
    out["held_out"].attrs = {"metric": metric, "long_name": adapter.metrics[metric]}
    if adapter.baseline:
        out["baseline_held_out"].attrs = {"metric": metric, "long_name": f"{metric} of a constant prediction"}
    out.attrs = {
        "training_op": params.op,
        "metric": metric,
        "search_space": json.dumps({p: d.model_dump(exclude_defaults=True) for p, d in params.space.items()}),
    }
    mark(out["ok"], "count_false", label="failed trials")
    return out
