"""`replicas.hyperopt`: an Optuna scan of a replica training op's params with a k-fold reward.

NNPDF chooses architecture, optimiser and learning rate by a hyperparameter scan whose reward is
a k-fold figure (kernels/kfold.py): each trial trains its replicas (~10, one batched job through
the replica core) once per fold with that fold held out, and is judged by the held-out chi2/n.
The scan is a TPE search (Optuna) whose study lives in the lake: an SQLite file copied to the
step's checkpoint folder after every trial, so an interrupted run resumes where it stopped. The
sampler is re-seeded from (seed, finished trials) before each trial, so a resumed scan draws what
an uninterrupted one would have.

Output: one row per trial (params, per-fold chi2/n, kept fraction, time, reward, ok), the best
trial's index and its recipe fragment (`winner_fragment(dataset)` reads it back). A trial that
diverged, kept no replica or scored above `max_reward` is marked failed and is never crowned:
a scan whose every trial fails has best_trial = -1.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Literal, get_origin

import dask
import dask.array as da
import numpy as np
import xarray as xr
from pydantic import BaseModel, Field, ValidationError, model_validator

from ..bounds import Params as _Params
from ..bounds import Repeats, Replicas, Seed
from ..errors import OpError, did_you_mean
from ..key_numbers import mark
from ..registry import StepContext, get_op, register_op
from . import needs
from .core import as_delayed, require_variables
from .ensembles import REPLICA

log = logging.getLogger("engine.hyperopt")
TRAINING_OPS = ("replicas.train", "pdf.fit")
STUDY_FILE = "study.sqlite3"
FRAGMENT_BYTES = 8192  # the winner's recipe fragment, UTF-8, NUL padded (zarr v3 has no strings)
FAILED_VALUE = 1e6  # what TPE is told for a failed trial: worse than any real reward


class Dimension(_Params):
    """One searched param: a range (low, high; log, integer, step) or a list of choices."""

    low: float | None = None
    high: float | None = None
    log: bool = Field(False, description="sample the range uniformly in log")
    integer: bool = Field(False, description="integer values (widths, epochs, patience)")
    step: float | None = Field(None, gt=0, description="grid step within the range")
    choices: list[Any] | None = Field(
        None,
        min_length=1,
        description="values to choose among (any YAML value: a list of widths, an activation list...)",
    )

    @model_validator(mode="after")
    def _kind(self) -> Dimension:
        ranged = self.low is not None or self.high is not None
        if ranged == (self.choices is not None):
            raise ValueError("give either low and high, or choices")
        if ranged:
            if self.low is None or self.high is None or not self.low < self.high:
                raise ValueError(f"a range needs low < high, found low={self.low}, high={self.high}")
            if self.log and self.low <= 0:
                raise ValueError(f"a log range needs low > 0, found {self.low}")
        return self


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
def _paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out += _paths(annotation, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def check_path(model: type[BaseModel], path: str, op: str) -> None:
    """A ValueError naming `path` (with did-you-mean) unless it names one param of `model`."""
    parts = path.split(".")
    cls: type[BaseModel] = model
    for i, part in enumerate(parts):
        field = cls.model_fields.get(part)
        if field is None:
            raise ValueError(f"unknown param {path!r} of {op}{did_you_mean(path, _paths(model))}")
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            cls = annotation
            continue
        rest = parts[i + 1 :]
        if rest and not (
            len(rest) == 1 and get_origin(annotation) is list and (rest[0] == "*" or rest[0].isdigit())
        ):
            raise ValueError(
                f"param {path!r} of {op}: {'.'.join(parts[: i + 1])!r} takes no sub-key "
                f"{'.'.join(rest)!r} (lists take an index or '*')"
            )
        return
    raise ValueError(
        f"param {path!r} of {op} is a group of params; name one of "
        f"{', '.join(p for p in _paths(model) if p.startswith(path + '.'))}"
    )


def apply_values(base: dict, values: dict[str, Any], defaults: dict) -> dict:
    """`base` with each searched path set: 'hidden.*' sets every layer, 'hidden.0' one; a list
    the base does not give is copied from the training op's `defaults` first."""
    merged = copy.deepcopy(base)
    for path, value in values.items():
        *head, last = path.split(".")
        target, fallback = merged, defaults
        for part in head:
            fallback = fallback.get(part) if isinstance(fallback, dict) else None
            if part not in target:  # a list is indexed into whole; a nested model takes the key alone
                target[part] = list(fallback) if isinstance(fallback, list) else {}
            target = target[part]
        if not isinstance(target, list):
            target[last] = value
        elif last == "*":
            target[:] = [value] * len(target)
        elif int(last) < len(target):
            target[int(last)] = value
        else:
            raise ValueError(f"{path!r} indexes layer {last} of {len(target)}: {target}")
    return merged


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
def _suggest(trial, path: str, dim: Dimension):
    if dim.choices is not None:
        return dim.choices[trial.suggest_categorical(path, list(range(len(dim.choices))))]
    if dim.integer:
        return trial.suggest_int(path, int(dim.low), int(dim.high), log=dim.log, step=int(dim.step or 1))
    return trial.suggest_float(path, dim.low, dim.high, log=dim.log, step=dim.step)


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
        training = spec.params.model_validate(apply_values(params.base, values, _defaults(params.op)))
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


def _defaults(op: str) -> dict:
    """The training op's defaults as plain data (lists and nested params to index into)."""
    out = {}
    for name, field in get_op(op).params.model_fields.items():
        if not field.is_required():
            value = field.get_default(call_default_factory=True)
            out[name] = value.model_dump() if isinstance(value, BaseModel) else value
    return out


class _Study:
    """The Optuna study of one step: an SQLite file kept in the lake's checkpoint folder."""

    def __init__(self, context: StepContext, folder: Path):
        from ..storage import Lake

        self.lake = Lake(context.lake_url, context.storage_options)
        self.remote = self.lake.path(context.checkpoint_path, STUDY_FILE)
        self.local = folder / STUDY_FILE
        if self.lake.fs.exists(self.remote):
            self.local.write_bytes(self.lake.fs.cat_file(self.remote))
            log.info("%s: resuming the hyperparameter scan from the lake", context.step_id)
        self.url = f"sqlite:///{self.local}"

    def save(self) -> None:
        self.lake.write_bytes_atomic(self.lake.writable(self.remote), self.local.read_bytes())

    def clear(self) -> None:
        if self.lake.fs.exists(self.remote):
            self.lake.fs.rm(self.remote.rsplit("/", 1)[0], recursive=True)


def _finished(study) -> list:
    from optuna.trial import TrialState

    return sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)


def run_scan(
    arrays: dict[str, np.ndarray], fold: np.ndarray, params: HyperoptParams, context: StepContext
) -> list:
    """Run (or resume) the study until `trials` trials have finished; returns them in order."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="hyperopt-") as folder:
        store = _Study(context, Path(folder))
        storage = optuna.storages.RDBStorage(store.url)
        study = optuna.create_study(
            storage=storage, study_name="hyperopt", direction="minimize", load_if_exists=True
        )
        for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # interrupted
            storage.set_trial_state_values(stale._trial_id, TrialState.FAIL)
        while len(done := _finished(study)) < params.trials:
            # seeded per finished trial through SeedSequence: consecutive integer seeds give numpy's
            # RandomState nearly the same first draws (measured: lr 0.00175, 0.00184, 0.00177)
            seed = int(np.random.SeedSequence([params.seed, len(done)]).generate_state(1)[0])
            sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=params.startup_trials)
            study = optuna.load_study(study_name="hyperopt", storage=storage, sampler=sampler)
            trial = study.ask()
            values = {path: _suggest(trial, path, dim) for path, dim in params.space.items()}
            record = evaluate_trial(values, arrays, fold, params)
            for key, value in record.items():
                trial.set_user_attr(
                    key, value if not isinstance(value, float) or math.isfinite(value) else None
                )
            study.tell(trial, min(record["reward"], FAILED_VALUE))
            store.save()
            log.info(
                "%s: trial %d/%d reward %.4g (%s)",
                context.step_id,
                len(done) + 1,
                params.trials,
                record["reward"],
                record["why"],
            )
        trials = [(t.params, t.user_attrs) for t in _finished(study)[: params.trials]]
        store.clear()
    return trials


def _fragment(params: HyperoptParams, values: dict[str, Any]) -> str:
    import yaml

    merged = apply_values(params.base, values, _defaults(params.op))
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
    trials = run_scan(arrays, np.asarray(fold), params, context)
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
            apply_values(params.base, values, _defaults(params.op))
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
