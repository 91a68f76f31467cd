"""ML4EFT ops: toy event samples, batched term training and the ratio r(x, c).

The chain of DOMAIN.md section 4: `lhc.eft_toy_events` writes the MC samples (SM and one
"SM + term" sample per term, an independent sample per replica) as flat columns along `event`;
`lhc.eft_toy_pseudodata` a pseudo-data sample at a chosen c; `lhc.eft_train` reduces the samples
to one stored ensemble (every term x replica network trained together); `lhc.eft_ratio` maps it
over event chunks; `lhc.eft_bounds` (engine.ops.lhc_eft_bounds) scans the extended unbinned
likelihood (and a binned one beside it) for 95% intervals.

Sample layout (what the training op reads from any event source): columns `sample_id` (index
into the attr `samples`, whose labels are "sm" or a term name such as "c1" or "c1*c1") and
`mc_replica`, plus the feature columns; attrs `sample_c_train` and `sample_sigma` (per sample, in
`samples` order) and `replicas`. Sample metadata sits in attrs so building the graph reads nothing.
"""

from __future__ import annotations

import json

import dask
import dask.array as da
import numpy as np
import xarray as xr
from pydantic import Field, field_validator, model_validator

from ..bounds import MAX_CHUNKS, MAX_EVENTS, Epochs, Events, Replicas, Rows, Seed, Widths
from ..bounds import Params as EftParams
from ..errors import OpError, did_you_mean
from ..registry import StepContext, register_op
from . import needs
from .core import as_delayed
from .ensembles import (
    REPLICA,
    checkpointed_training,
    ensemble_architecture,
    history_length,
    lazy_ensemble,
    result_arrays,
    result_layout,
    weight_names,
)
from .replicas import TrainingParams

EVENT = "event"
SM = "sm"


def _toy():
    """The toy and the term algebra: numpy only, so building a graph of them imports no torch."""
    from ..kernels import eft_toy

    return eft_toy


def check_coefficients(names: list[str], known, what: str) -> None:
    for name in names:
        if name not in known:
            raise OpError(f"unknown Wilson coefficient {name!r} in {what}{did_you_mean(name, known)}; "
                          f"known: {', '.join(known)}")


# -- toy samples ----------------------------------------------------------------------------------
class ToyEventsParams(EftParams):
    coefficients: list[str] = Field(["c1"], min_length=1, description="toy coefficients: c1, c2")
    quadratic: bool = Field(True, description="also the quadratic terms c_j c_k")
    c_train: dict[str, float] = Field(description="coefficient -> value the SM+term samples use")
    n_events: Events = Field(50_000, gt=0, description="events per sample and replica")
    replicas: Replicas = Field(5, gt=0, description="independent MC samples of each kind")
    chunk_events: Rows = Field(50_000, gt=0)
    seed: Seed = 0

    @model_validator(mode="after")
    def _few_chunks(self) -> ToyEventsParams:
        """Every chunk of every replica's sample is laid out while the graph is built."""
        chunks = -(-self.n_events // self.chunk_events) * self.replicas
        if chunks > MAX_CHUNKS:
            raise ValueError(f"expected at most {MAX_CHUNKS} chunks per sample (n_events / chunk_events "
                             f"x replicas), found {chunks}; raise chunk_events")
        return self


def _toy_block(kind: str, c_train: float, replica: int, index: int, n: int, seed: int) -> np.ndarray:
    """One chunk of one sample, keyed by (seed, sample, replica, chunk): any chunk alone."""
    eft = _toy()
    key = [seed, replica, index, *map(ord, kind)]
    rng = np.random.default_rng(key)
    if kind == SM:
        return eft.sample_toy(rng, n, {})
    return eft.sample_toy_term(rng, n, eft.parse_term(kind), c_train)


def _block_sizes(n: int, chunk: int) -> list[int]:
    return [min(chunk, n - start) for start in range(0, n, chunk)]


@register_op("lhc.eft_toy_events", params=ToyEventsParams, inputs=(),
             memory=3.0)  # each chunk drawn by rejection sampling
def eft_toy_events(params: ToyEventsParams) -> xr.Dataset:
    """MC samples of the analytic ML4EFT toy: SM plus "SM + term" at c_train, per replica.

    Exact sampling (DOMAIN.md section 4): dsigma_SM = e^-x1 phi(x2), r = 1 + c x1/2 +
    c^2 x1^2 (1 + x2^2)/16 for c1 (and a second coefficient c2 for 2-D scans). Columns x1, x2,
    sample_id, mc_replica along `event`; each chunk is generated from its own seed.
    """
    eft = _toy()
    check_coefficients(params.coefficients, eft.TOY_COEFFICIENTS, "coefficients")
    check_coefficients(list(params.c_train), params.coefficients, "c_train")
    for name in params.coefficients:
        if params.c_train.get(name, 0.0) == 0.0:
            raise OpError(f"c_train of {name!r} must be given and non-zero (found "
                          f"{params.c_train.get(name)}): SM + term at c = 0 is the SM sample")
    terms = eft.eft_terms(params.coefficients, params.quadratic)
    for term in terms:
        if len(set(term)) > 1 and params.c_train[term[0]] != params.c_train[term[1]]:
            raise OpError(f"the mixed term {eft.term_name(term)!r} is sampled at one c_train, but "
                          f"{term[0]!r} and {term[1]!r} have {params.c_train[term[0]]} and "
                          f"{params.c_train[term[1]]}")
    kinds = [SM] + [eft.term_name(t) for t in terms]
    c_trains = [0.0] + [float(params.c_train[t[0]]) for t in terms]
    sigmas = [eft.SM_SIGMA] + [eft.SM_SIGMA + c ** len(t) * eft.toy_sigma(t)
                               for c, t in zip(c_trains[1:], terms)]
    blocks, ids, reps = [], [], []
    sizes = _block_sizes(params.n_events, params.chunk_events)
    for sample, kind in enumerate(kinds):
        for replica in range(params.replicas):
            for index, n in enumerate(sizes):
                block = dask.delayed(_toy_block, pure=True)(kind, c_trains[sample], replica, index, n,
                                                            params.seed)
                blocks.append(da.from_delayed(block, (n, 2), float))
                ids.append(da.full(n, sample, dtype=np.int16, chunks=n))
                reps.append(da.full(n, replica, dtype=np.int32, chunks=n))
    xs = da.concatenate(blocks)
    return xr.Dataset(
        {"x1": (EVENT, xs[:, 0]), "x2": (EVENT, xs[:, 1]),
         "sample_id": (EVENT, da.concatenate(ids)), "mc_replica": (EVENT, da.concatenate(reps))},
        attrs={"toy": eft.TOY_NAME, "replicas": params.replicas, "samples": kinds, "sample_c_train": c_trains,
               "sample_sigma": sigmas, "coefficients": list(params.coefficients)})


class ToyPseudodataParams(EftParams):
    c_true: dict[str, float] = Field(default_factory=dict, description="coefficients of the 'data'")
    luminosity: float = Field(gt=0, description="expected events = luminosity x sigma(c_true)")
    chunk_events: Rows = Field(50_000, gt=0)
    seed: Seed = 0


@register_op("lhc.eft_toy_pseudodata", params=ToyPseudodataParams, inputs=(),
             memory=3.0)  # each chunk drawn by rejection sampling
def eft_toy_pseudodata(params: ToyPseudodataParams) -> xr.Dataset:
    """A pseudo-data sample of the toy at c_true: Poisson(Lumi sigma(c_true)) events, exactly."""
    eft = _toy()
    check_coefficients(list(params.c_true), eft.TOY_COEFFICIENTS, "c_true")
    names = list(params.c_true)
    point = np.array([[params.c_true[c] for c in names]])
    sigma = float(eft.toy_cross_section(point, names)[0]) if names else eft.SM_SIGMA
    expected = params.luminosity * sigma
    if not expected <= MAX_EVENTS or expected / params.chunk_events > MAX_CHUNKS:
        raise OpError(f"expected at most {MAX_EVENTS} events in at most {MAX_CHUNKS} chunks, found "
                      f"luminosity x sigma(c_true) = {expected:.3g} events in chunks of "
                      f"{params.chunk_events}")
    n = int(np.random.default_rng([params.seed, 0]).poisson(params.luminosity * sigma))
    if n == 0:
        raise OpError(f"the pseudo-data sample is empty: Poisson({params.luminosity * sigma:.3g}) drew 0 "
                      "events; raise the luminosity")
    blocks = [da.from_delayed(dask.delayed(_pseudodata_block, pure=True)(
        params.c_true, params.seed, k, size), (size, 2), float)
        for k, size in enumerate(_block_sizes(n, params.chunk_events))]
    xs = da.concatenate(blocks)
    return xr.Dataset({"x1": (EVENT, xs[:, 0]), "x2": (EVENT, xs[:, 1])},
                      attrs={"toy": eft.TOY_NAME, "luminosity": params.luminosity,
                             "c_true": json.dumps(params.c_true), "sigma": sigma})


def _pseudodata_block(c_true: dict, seed: int, index: int, n: int) -> np.ndarray:
    return _toy().sample_toy(np.random.default_rng([seed, 1, index]), n, c_true)


# -- training -------------------------------------------------------------------------------------
class EftTrainParams(TrainingParams):
    features: list[str] = Field(["x1", "x2"], min_length=1, description="per-event feature columns")
    coefficients: list[str] = Field(min_length=1, description="Wilson coefficients to learn")
    quadratic: bool = Field(True, description="also learn the quadratic terms c_j c_k")
    batch_size: Rows | None = Field(None, gt=0, description="events per minibatch (None: all)")
    validation_fraction: float = Field(0.2, gt=0, lt=1)
    hidden: Widths = Field([25, 25, 25], description="hidden layer widths")
    activations: list[str] = Field(["tanh", "tanh", "tanh", "linear"], description="one per layer")
    epochs: Epochs = Field(2000, gt=0)


class SampleLayout:
    """Where each term's sample sits in an events dataset, read from its labels and attrs only."""

    def __init__(self, data: xr.Dataset, terms: list[tuple[str, ...]]):
        missing = [k for k in ("sample_id", "mc_replica") if k not in data.variables]
        if missing:
            raise OpError(f"events need the columns sample_id and mc_replica (as lhc.eft_toy_events "
                          f"writes them); missing: {missing}")
        for key in ("samples", "sample_c_train", "sample_sigma", "replicas"):
            if key not in data.attrs:
                raise OpError(f"events lack the attribute {key!r} (sample labels, their c_train and "
                              "cross sections, and the replica count)")
        labels = [str(s) for s in data.attrs["samples"]]
        if SM not in labels:
            raise OpError(f"events hold no SM sample (a 'sample' labelled {SM!r}); found {labels}")
        eft = _toy()
        self.sm = labels.index(SM)
        self.terms = []
        for term in terms:
            name = eft.term_name(term)
            if name not in labels:
                raise OpError(f"events hold no sample for term {name!r}{did_you_mean(name, labels)}; "
                              f"samples are {labels}")
            self.terms.append(labels.index(name))
        self.c_train = [float(data.attrs["sample_c_train"][k]) for k in self.terms]
        for term, c in zip(terms, self.c_train):
            if c == 0:
                raise OpError(f"c_train of term {eft.term_name(term)!r} is 0: SM + term would be the SM")
        self.c_scale = [c ** len(t) for c, t in zip(self.c_train, terms)]
        self.sigma_sm = float(data.attrs["sample_sigma"][self.sm])
        self.sigma = [float(data.attrs["sample_sigma"][k]) for k in self.terms]
        self.replicas = int(data.attrs["replicas"])


def require_features(data: xr.Dataset, names: list[str]) -> list[xr.DataArray]:
    """The named per-event columns, with a did-you-mean for a missing one."""
    found = []
    for name in names:
        if name not in data.variables:
            raise OpError(f"feature column {name!r} is not in the events"
                          f"{did_you_mean(name, data.variables)}; columns are "
                          f"{', '.join(map(str, data.data_vars))}")
        if data[name].dims != (EVENT,):
            raise OpError(f"feature {name!r} must be a flat column along {EVENT!r}, found {data[name].dims}")
        found.append(data[name])
    if data.sizes.get(EVENT, 0) == 0:
        raise OpError("the events are empty: no rows along 'event'")
    return found


def _group(features: np.ndarray, sample_id: np.ndarray, replica: np.ndarray, sample: int,
           replicas: int, what: str) -> list[np.ndarray]:
    out = []
    for r in range(replicas):
        rows = features[(sample_id == sample) & (replica == r)]
        if len(rows) == 0:
            raise OpError(f"the {what} sample of MC replica {r} is empty")
        out.append(rows)
    return out


def _stack_equal(groups: list[np.ndarray]) -> np.ndarray:
    """Samples cut to the smallest one's size: every row of the ensemble sees the same count."""
    n = min(len(g) for g in groups)
    return np.stack([g[:n] for g in groups])


def term_samples(x: np.ndarray, sample_id: np.ndarray, replica: np.ndarray, layout: SampleLayout,
                 names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Events x (n, f) as the kernel's samples: SM (R, N, f) and SM + term (T, R, M, f), each cut to
    its smallest (term, replica) sample (lhc.eft_train, replicas.hyperopt)."""
    sm = _stack_equal(_group(x, sample_id, replica, layout.sm, layout.replicas, SM))
    eft = [_group(x, sample_id, replica, k, layout.replicas, name)
           for k, name in zip(layout.terms, names)]
    eft = _stack_equal([g for groups in eft for g in groups]).reshape(len(names), layout.replicas, -1,
                                                                      x.shape[-1])
    return sm, eft


def training_config(params: EftTrainParams):
    """The kernel's settings from the op's params (lhc.eft_train, replicas.hyperopt)."""
    from ..kernels.eft import EftTrainConfig
    from ..kernels.optim import OptimiserConfig
    from ..kernels.train import StoppingConfig

    return EftTrainConfig(
        tuple(params.hidden), tuple(params.activations), params.epochs, params.batch_size,
        OptimiserConfig(**params.optimiser.model_dump()), StoppingConfig(**params.stopping.model_dump()),
        params.validation_every, params.validation_fraction, params.seed, params.device,
        params.checkpoint_every)


def _train(features, sample_id, replica, layout: SampleLayout, names: list[str],
           params: EftTrainParams, context: StepContext):
    from ..kernels.eft import fit_eft

    sm, eft = term_samples(np.stack(features, axis=-1).astype(float), sample_id, replica, layout, names)
    config = training_config(params)
    fitted = {}

    def fit(**hooks):
        result, fitted["low"], fitted["high"] = fit_eft(
            sm, eft, layout.sigma_sm, np.array(layout.sigma), np.array(layout.c_scale), config, **hooks)
        return result

    result = checkpointed_training(context, params.epochs, params.validation_every, fit)
    return {**result_arrays(result, history_length(params.epochs, params.validation_every)),
            "input_low": fitted["low"], "input_high": fitted["high"]}


@register_op("lhc.eft_train", params=EftTrainParams, inputs=("events",), wants_context=True, version="1",
             memory=needs.TorchNeed(needs.eft_train_need))
def eft_train(params: EftTrainParams, events: xr.Dataset, context: StepContext) -> xr.Dataset:
    """One network per EFT term (linear per coefficient, quadratic per pair) x MC replica, all
    trained together in one batched job: classifier SM vs SM + term at c_train, cross-entropy
    weighted by each sample's cross section, smooth positivity 1 + s NN > 0, stagnation resets,
    robust 5-95% feature scaling. Rows of `replica` are term-major: row = term x R + replica.
    """
    from ..kernels.eft_toy import TERM_OUTPUT_TRANSFORM, eft_terms, term_name

    known = list(events.attrs.get("coefficients", []))
    if known:
        check_coefficients(params.coefficients, known, "coefficients")
    terms = eft_terms(params.coefficients, params.quadratic)
    layout = SampleLayout(events, terms)
    features = require_features(events, params.features)
    names = [term_name(t) for t in terms]
    rows = len(terms) * layout.replicas
    architecture = ensemble_architecture(len(features), params.hidden, params.activations, params.seed,
                                         output_transform=TERM_OUTPUT_TRANSFORM, replica_params=["c_scale"])
    trained = dask.delayed(_train, pure=True)(
        [as_delayed(f.data) for f in features], as_delayed(events["sample_id"].data),
        as_delayed(events["mc_replica"].data), layout, names, params, context)
    shapes = result_layout(architecture, rows, history_length(params.epochs, params.validation_every))
    shapes["param_c_scale"] = ((REPLICA,), (rows,), np.float32)
    shapes["input_low"] = (("feature",), (len(features),), float)
    shapes["input_high"] = (("feature",), (len(features),), float)
    model = lazy_ensemble(trained, shapes, architecture, {
        "features": list(params.features), "kind": "ML4EFT term ensemble", "epochs": params.epochs,
        "coefficients": list(params.coefficients), "terms": names, "replicas": layout.replicas,
        "c_train": layout.c_train, "term_sigma": [(s - layout.sigma_sm) / c for s, c in
                                                  zip(layout.sigma, layout.c_scale)],
        "sigma_sm": layout.sigma_sm})
    return model.assign_coords(row_term=(REPLICA, np.repeat(np.arange(len(terms)), layout.replicas)),
                               row_replica=(REPLICA, np.tile(np.arange(layout.replicas), len(terms))))


# -- inference: shared by ratio and bounds --------------------------------------------------------
class EftEnsemble:
    """A stored term ensemble: what building a graph on it needs, checked, without computing."""

    def __init__(self, model: xr.Dataset):
        if model.attrs.get("kind") != "ML4EFT term ensemble":
            raise OpError("input 'model' is not an ML4EFT term ensemble (made by lhc.eft_train)")
        self.architecture = json.loads(model.attrs["architecture"])
        self.features = list(model.attrs["features"])
        self.coefficients = list(model.attrs["coefficients"])
        self.terms = [tuple(t.split("*")) for t in model.attrs["terms"]]
        self.replicas = int(model.attrs["replicas"])
        self.sigma_sm = float(model.attrs["sigma_sm"])
        self.term_sigma = np.asarray(model.attrs["term_sigma"], float)
        self.weights = dask.delayed(_weight_arrays, pure=True)(
            list(model.attrs["terms"]), self.replicas, **{n: as_delayed(model[n].data) for n in
               [*weight_names(model), "input_low", "input_high", "kept"]})

    def points(self, values: list[dict[str, float]]) -> np.ndarray:
        """(G, C) coefficient points from {name: value} dicts; absent coefficients are 0."""
        for point in values:
            check_coefficients(list(point), self.coefficients, "a coefficient point")
        return np.array([[p.get(c, 0.0) for c in self.coefficients] for p in values], float)

    def products(self, points: np.ndarray) -> np.ndarray:
        return _toy().coefficient_products(points, self.coefficients, self.terms)

    def stacked(self, data: xr.Dataset) -> da.Array:
        """The model's features as one (event, feature) dask array over the data's chunks."""
        return stack_features(require_features(data, self.features))


def stack_features(columns: list[xr.DataArray]) -> da.Array:
    """Columns along `event` as one (event, feature) array, the features in one chunk.

    method="tasks": joining a few one-column chunks per block of events needs no shuffle, and
    left to choose, dask asks dask.distributed whether a client runs, importing it at every plan.
    """
    return da.stack([c.data for c in columns], axis=-1).rechunk({1: -1}, method="tasks")


def _weight_arrays(terms: list[str], replicas: int, **arrays):
    """The stored arrays, refused when a term has no kept replica (its median would be NaN)."""
    kept = np.asarray(arrays["kept"], bool).reshape(len(terms), replicas)
    if failed := [term for term, row in zip(terms, kept) if not row.any()]:
        raise ValueError(f"the model has no kept replica of term(s) {', '.join(failed)}: every "
                         "replica missed stopping.threshold; train for more epochs or raise it")
    return {name: np.asarray(value) for name, value in arrays.items()}


def term_networks(block: np.ndarray, weights: dict, architecture: dict, replicas: int) -> np.ndarray:
    """(T, R, n) NN values on one chunk; rows of dropped replicas are NaN."""
    from ..kernels.eft import predict_terms

    nn = predict_terms(weights, architecture, block, weights["input_low"], weights["input_high"])
    nn[~np.asarray(weights["kept"], bool)] = np.nan
    return nn.reshape(-1, replicas, block.shape[0])


# -- ratio ----------------------------------------------------------------------------------------
class RatioParams(EftParams):
    points: list[dict[str, float]] = Field(min_length=1, description="coefficient values, e.g. [{c1: 1}]")
    quantiles: list[float] = Field([0.05, 0.5, 0.95], min_length=1, description="band over replicas")

    @field_validator("quantiles")
    @classmethod
    def _in_unit_interval(cls, value: list[float]) -> list[float]:
        if any(not 0 <= q <= 1 for q in value):
            raise ValueError(f"quantiles must lie in [0, 1], found {value}")
        return value


def _ratio_block(block, weights, architecture, replicas, products, quantiles):
    from ..kernels.eft import ratio_from_terms

    nn = term_networks(block, weights, architecture, replicas)
    r = ratio_from_terms(products, nn)  # (G, R, n)
    median = ratio_from_terms(products, np.nanmedian(nn, axis=1))
    return np.concatenate([median[None], np.nanquantile(r, quantiles, axis=1)]).astype(np.float32)


@register_op("lhc.eft_ratio", params=RatioParams, inputs=("model", "data"),
             memory=needs.TorchNeed(4.0))  # term networks and ratios per chunk of events
def eft_ratio(params: RatioParams, model: xr.Dataset, data: xr.Dataset) -> xr.Dataset:
    """r(x, c) of a term ensemble on every event, lazily chunk by chunk, at the given c points.

    ratio_median: from the median over replicas of each term (as the likelihood uses it);
    ratio_quantile: quantiles over replicas of the whole r(x, c). Data columns pass through.
    """
    ensemble = EftEnsemble(model)
    points = ensemble.points(params.points)
    stacked = ensemble.stacked(data)
    g, q = len(points), len(params.quantiles)
    out = da.map_blocks(_ratio_block, stacked, ensemble.weights, ensemble.architecture,
                        ensemble.replicas, ensemble.products(points), params.quantiles,
                        drop_axis=1, new_axis=[0, 1], chunks=((1 + q,), (g,), stacked.chunks[0]),
                        dtype=np.float32, meta=np.empty((0, 0, 0), np.float32))  # meta: no torch at plan
    coords = {c: ("point", points[:, i]) for i, c in enumerate(ensemble.coefficients)}
    result = xr.Dataset({"ratio_median": (("point", EVENT), out[0]),
                         "ratio_quantile": (("quantile", "point", EVENT), out[1:])},
                        coords={**coords, "quantile": params.quantiles})
    return result.assign({k: v for k, v in data.data_vars.items() if v.dims == (EVENT,)})
