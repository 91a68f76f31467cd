"""Jet taggers on constituents: a supervised classifier and an autoencoder anomaly score.

`lhc.train_classifier` and `lhc.anomaly_score` read jets in the top-tagging layout (E, PX, PY, PZ
over (jet, constituent), `label` 1 = signal), compute jet-frame features chunk by chunk (lazily,
kernels.jet_preprocess), split the jets deterministically into train / validation / test, and
train one replica ensemble in one batched job (kernels.classifier through the replica core).
Replicas are bootstrap resamples of the training jets (or differ by seed only), so each metric
on the test jets comes per replica: the spread is the training's statistical uncertainty.

The output is the model (weights, input scaling, training record, as every replica ensemble)
plus the metrics: AUC, accuracy (classifier), background rejection 1/eps_B at the chosen signal
efficiency, and the ROC as eps_B on a fixed eps_S grid (plot kind `roc`). A classifier also
reports how much a cut on it sculpts the background jet mass, and can be decorrelated from the
mass by an adversary (the pivot: kernels.classifier.AdversarialLoss, param `adversary.strength`).
`lhc.score_jets` maps a stored tagger over any jets, chunk by chunk.
"""

from __future__ import annotations

import json
from typing import Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr
from pydantic import Field, model_validator

from ..bounds import Constituents, Epochs, Replicas, Rows, Seed, Widths
from ..bounds import Params as _Params
from ..errors import OpError
from ..key_numbers import mark
from ..registry import StepContext, register_op
from . import needs
from .core import as_delayed, require_dims, require_variables
from .ensembles import (
    REPLICA,
    checkpointed_training,
    ensemble_architecture,
    history_length,
    lazy_ensemble,
    require_layer_activations,
    result_arrays,
    result_layout,
    weight_names,
)
from .replicas import _weight_arrays

JET, CONSTITUENT = "jet", "constituent"
MOMENTA = ("E", "PX", "PY", "PZ")
ROC_POINTS = np.round(np.linspace(0.01, 1.0, 100), 4)
SPLIT_STREAM = 7  # the split's random stream, apart from the replicas' bootstrap streams


class NetworkParams(_Params):
    """What both taggers share: the network, its training and the replica ensemble."""

    n_constituents: Constituents = Field(30, gt=0, description="leading constituents used as features")
    hidden: Widths = Field([64, 64], description="hidden layer widths")
    activations: list[str] = Field(["relu", "relu", "linear"], description="one per layer")
    epochs: Epochs = Field(500, gt=0, description="most training steps (full-batch epochs, or minibatches)")
    batch_size: Rows | None = Field(None, gt=0, description="jets per minibatch step; none: full batch")
    lr: float = Field(3e-3, gt=0, description="Adam learning rate")
    patience: Epochs = Field(60, gt=0, description="epochs without validation improvement before stopping")
    validation_every: Epochs = Field(10, gt=0)
    replicas: Replicas = Field(5, gt=0)
    resample: Literal["bootstrap", "seeds"] = Field(
        "bootstrap", description="replicas resample the training jets, or differ by seed only")
    test_fraction: float = Field(0.3, gt=0, lt=1, description="jets held out for the metrics")
    validation_fraction: float = Field(0.15, gt=0, lt=1, description="jets for early stopping")
    max_jets: Rows | None = Field(None, gt=0, description="use at most this many jets (the first ones): "
                                 "their features are held in memory by the one training task")
    signal_efficiency: float = Field(0.3, gt=0, le=1, description="eps_S of the quoted rejection")
    seed: Seed = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint_every: Epochs | None = Field(None, gt=0, description="epochs between lake checkpoints")

    @model_validator(mode="after")
    def _layers(self):
        require_layer_activations(self.hidden, self.activations)
        if any(w <= 0 for w in self.hidden):
            raise ValueError(f"hidden widths must be positive, found {self.hidden}")
        if self.test_fraction + self.validation_fraction >= 0.9:
            raise ValueError("test_fraction + validation_fraction must leave >= 10% of jets to train on")
        return self


class AdversaryParams(_Params):
    """Mass decorrelation: an adversary predicts the jet mass of background jets from the tagger's
    output, and the tagger is penalised by strength x the adversary's cross-entropy (the pivot)."""

    strength: float = Field(description="lambda: weight of the adversary's loss in the tagger's "
                            "(0: the adversary trains but does not act)", ge=0)
    bins: int = Field(10, ge=2, le=1000, description="equal-population jet-mass bins the adversary predicts")
    hidden: Widths = Field([32], description="adversary hidden widths")
    lr: float = Field(1e-3, gt=0, description="adversary Adam learning rate")
    steps: int = Field(5, ge=1, le=1000, description="adversary updates per tagger step")
    pretrain: Epochs = Field(200, ge=0, description="adversary updates before the tagger's first step")


class ClassifierParams(NetworkParams):
    adversary: AdversaryParams | None = Field(None, description="decorrelate the tagger from the jet "
                                              "mass (none: a plain tagger)")
    sculpting_efficiency: float = Field(0.5, gt=0, le=1, description="eps_S of the cut whose background "
                                        "mass sculpting (mass_jsd) is reported")


class AnomalyParams(NetworkParams):
    hidden: Widths = Field([32, 6, 32], description="encoder, bottleneck and decoder widths")
    activations: list[str] = Field(["tanh", "tanh", "tanh", "linear"], description="one per layer")


def jet_features(jets: xr.Dataset, n_constituents: int) -> da.Array:
    """(jet, 3 n) float32 jet-frame features, computed chunk by chunk along `jet` (also replicas.hyperopt)."""
    from ..kernels.jet_preprocess import constituent_features

    require_variables(jets, [*MOMENTA, "label"])
    require_dims(jets, [JET, CONSTITUENT])
    for name in MOMENTA:
        if jets[name].dims != (JET, CONSTITUENT):
            raise OpError(f"variable {name!r} must have dims ({JET!r}, {CONSTITUENT!r}), "
                          f"found {jets[name].dims}")
    if jets["label"].dims != (JET,):
        raise OpError(f"variable 'label' must have dims ({JET!r},), found {jets['label'].dims}")
    if n_constituents > jets.sizes[CONSTITUENT]:
        raise OpError(f"n_constituents={n_constituents} but the jets hold only "
                      f"{jets.sizes[CONSTITUENT]} constituents")
    if jets.sizes[JET] == 0:
        raise OpError("the jets dataset is empty (0 jets)")
    arrays = [jets[name].data for name in MOMENTA]
    arrays = [da.asarray(a).rechunk({1: -1}) for a in arrays]
    return da.map_blocks(constituent_features, *arrays, n_constituents, dtype=np.float32,
                         chunks=(arrays[0].chunks[0], (3 * n_constituents,)))


def jet_mass_of(jets: xr.Dataset) -> da.Array:
    """(jet,) invariant mass of all constituents, chunk by chunk (the nuisance of decorrelation)."""
    from ..kernels.jets_synth import jet_mass

    arrays = [da.asarray(jets[name].data).rechunk({1: -1}) for name in MOMENTA]
    return da.map_blocks(jet_mass, *arrays, drop_axis=1, dtype=float, chunks=(arrays[0].chunks[0],))


def split_jets(n: int, test_fraction: float, validation_fraction: float, seed: int) -> np.ndarray:
    """Per jet 0 = train, 1 = validation, 2 = test; a function of (seed, n) only."""
    u = np.random.default_rng([seed, SPLIT_STREAM]).uniform(size=n)
    return np.where(u < test_fraction, 2, np.where(u < test_fraction + validation_fraction, 1, 0))


def _metrics(scores: np.ndarray, labels: np.ndarray, params: NetworkParams, kind: str,
             mass: np.ndarray | None = None) -> dict:
    """Per-replica test metrics of (R, n) scores."""
    from ..kernels.classifier import accuracy, auc, background_efficiency, mass_sculpting, rejection

    n_background = int((labels == 0).sum())
    eps_b = np.stack([background_efficiency(s, labels, ROC_POINTS) for s in scores])
    at_point = np.stack([background_efficiency(s, labels, params.signal_efficiency)[0] for s in scores])
    out = {"auc": np.array([auc(s, labels) for s in scores]),
           "background_efficiency": eps_b,
           "background_rejection": rejection(at_point, n_background),
           "n_background_test": np.array(n_background), "n_signal_test": np.array(labels.size - n_background)}
    if kind == "bce":
        out["accuracy"] = np.array([accuracy(s, labels) for s in scores])
        out["mass_jsd"] = np.array([mass_sculpting(s, labels, mass, params.sculpting_efficiency)
                                    for s in scores])
    return out


def train_on(kind: str, features: np.ndarray, labels: np.ndarray, train: np.ndarray, val: np.ndarray,
             params: NetworkParams, mass: np.ndarray | None = None, **hooks):
    """Fit the op's ensemble (kind bce: tagger; reconstruction: autoencoder) on the `train` jets,
    stopping on the `val` jets: bootstrap or plain weights, the adversary where params have one
    (lhc.train_classifier, lhc.anomaly_score, replicas.hyperopt). Returns fit_network's (result, scale)."""
    from ..kernels.classifier import AdversaryConfig, NetworkConfig, bootstrap_weights, fit_network
    from ..kernels.optim import OptimiserConfig
    from ..kernels.train import StoppingConfig

    n_train = int(train.sum())
    weights = (bootstrap_weights(n_train, params.replicas, params.seed) if params.resample == "bootstrap"
               else np.ones((params.replicas, n_train)))
    config = NetworkConfig(tuple(params.hidden), tuple(params.activations), params.epochs,
                           OptimiserConfig(lr=params.lr),
                           StoppingConfig(threshold=np.inf, patience=params.patience),
                           params.validation_every, params.seed, params.device, params.checkpoint_every)
    adversary = getattr(params, "adversary", None)
    extra = {}
    if adversary is not None:
        extra = {"adversary": AdversaryConfig(adversary.strength, adversary.bins, tuple(adversary.hidden),
                                              adversary.lr, adversary.steps, adversary.pretrain),
                 "nuisance": (mass[train], mass[val])}
    return fit_network(kind, features[train], labels[train].astype(float), weights, features[val],
                       labels[val].astype(float), np.ones(int(val.sum())), config,
                       batch_size=params.batch_size, **hooks, **extra)


def _fit(kind: str, features: np.ndarray, labels: np.ndarray, params: NetworkParams,
         context: StepContext, mass: np.ndarray | None = None) -> dict[str, np.ndarray]:
    from ..kernels.classifier import evaluate_network

    labels = np.asarray(labels).astype(int)
    if labels.all() or not labels.any():
        raise OpError(f"the jets' labels are all {labels[0]} ({labels.size} jets): a tagger needs "
                      "signal (1) and background (0) jets to be trained and judged")
    split = split_jets(len(labels), params.test_fraction, params.validation_fraction, params.seed)
    train, val = split == 0, split == 1
    if kind == "reconstruction":  # the autoencoder learns background only
        train, val = train & (labels == 0), val & (labels == 0)
    test = split == 2
    for name, mask in (("training", train), ("validation", val)):
        if mask.sum() < 2:
            raise OpError(f"only {int(mask.sum())} {name} jets; give more jets or change the fractions")
    if labels[test].all() or not labels[test].any():
        raise OpError(f"the {int(test.sum())} test jets hold one class only; give more jets")
    fitted = {}

    def fit(**hooks):
        result, fitted["scale"] = train_on(kind, features, labels, train, val, params, mass, **hooks)
        return result

    result = checkpointed_training(context, params.epochs, params.validation_every, fit)
    scale = fitted["scale"]
    scores = evaluate_network(kind, result.weights, result.architecture, features[test], scale, params.device)
    return {**result_arrays(result, history_length(params.epochs, params.validation_every)),
            "input_mean": scale.mean, "input_std": scale.std,
            **_metrics(scores, labels[test], params, kind, None if mass is None else mass[test])}


def _tagger(kind: str, params: NetworkParams, jets: xr.Dataset, context: StepContext,
            description: str) -> xr.Dataset:
    if params.max_jets is not None:
        jets = jets.isel({JET: slice(0, params.max_jets)})
    features = jet_features(jets, params.n_constituents)
    mass = jet_mass_of(jets) if kind == "bce" else None
    n_in = 3 * params.n_constituents
    n_out = 1 if kind == "bce" else n_in
    architecture = ensemble_architecture(n_in, params.hidden, params.activations, params.seed, n_out=n_out)
    trained = dask.delayed(_fit, pure=True)(kind, as_delayed(features), as_delayed(jets["label"].data),
                                            params, context, as_delayed(mass))
    r = params.replicas
    layout = result_layout(architecture, r, history_length(params.epochs, params.validation_every))
    layout.update({"input_mean": (("feature",), (n_in,), float), "input_std": (("feature",), (n_in,), float),
                   "n_background_test": ((), (), np.int64), "n_signal_test": ((), (), np.int64),
                   "auc": ((REPLICA,), (r,), float), "background_rejection": ((REPLICA,), (r,), float),
                   "background_efficiency": ((REPLICA, "signal_efficiency"), (r, ROC_POINTS.size), float)})
    if kind == "bce":
        layout["accuracy"] = ((REPLICA,), (r,), float)
        layout["mass_jsd"] = ((REPLICA,), (r,), float)
    model = lazy_ensemble(trained, layout, architecture, {
        "kind": description, "score": kind, "n_constituents": params.n_constituents,
        "quoted_signal_efficiency": params.signal_efficiency})
    model["background_rejection"].attrs["long_name"] = f"1/eps_B at eps_S = {params.signal_efficiency:g}"
    mark(model["auc"], "median")  # over replicas, in the run summary (engine/key_numbers.py)
    # where no background jet passes, 1/eps_B is only bounded by their number (kernels.classifier.rejection)
    mark(model["background_rejection"], "median", lower_limit_at="n_background_test")
    if kind == "bce":
        model["mass_jsd"].attrs["long_name"] = (f"JSD of background jet mass before/after the cut at "
                                                f"eps_S = {params.sculpting_efficiency:g}")
        mark(model["mass_jsd"], "median")
    return model.assign_coords(signal_efficiency=("signal_efficiency", ROC_POINTS))


@register_op("lhc.train_classifier", params=ClassifierParams, inputs=("jets",), wants_context=True,
             memory=needs.TorchNeed(needs.tagger_need))
def train_classifier(params: ClassifierParams, jets: xr.Dataset, context: StepContext) -> xr.Dataset:
    """A DNN top tagger on jet-frame constituents, one network per replica, with test metrics.

    Outputs the ensemble plus per-replica auc, accuracy, background_rejection (at eps_S =
    signal_efficiency), background_efficiency on a signal-efficiency grid (ROC), and mass_jsd: the
    background jet-mass sculpting (Jensen-Shannon divergence, base 2) of the cut at eps_S =
    sculpting_efficiency. With `adversary`, an adversary on the jet mass decorrelates the tagger.
    """
    return _tagger("bce", params, jets, context, "jet classifier ensemble")


@register_op("lhc.anomaly_score", params=AnomalyParams, inputs=("jets",), wants_context=True,
             memory=needs.TorchNeed(needs.tagger_need))
def anomaly_score(params: AnomalyParams, jets: xr.Dataset, context: StepContext) -> xr.Dataset:
    """An autoencoder trained on background jets only; score = reconstruction error.

    The labels are used only to pick the background for training and to judge the score on the
    test jets (auc, background_rejection, ROC against the signal), never in the loss.
    """
    return _tagger("reconstruction", params, jets, context, "jet autoencoder ensemble")


class ScoreParams(_Params):
    name: str = Field("score", description="name of the output variable")
    device: Literal["auto", "cpu", "cuda"] = "cpu"


def _score_block(E, PX, PY, PZ, weights: dict, architecture: dict, kind: str, n: int, device: str):
    from ..kernels.classifier import Standardiser, evaluate_network
    from ..kernels.jet_preprocess import constituent_features

    scale = Standardiser(weights["input_mean"], weights["input_std"])
    return evaluate_network(kind, weights, architecture, constituent_features(E, PX, PY, PZ, n),
                            scale, device).astype(np.float32)


@register_op("lhc.score_jets", params=ScoreParams, inputs=("model", "jets"),
             memory=needs.TorchNeed(3.0))  # jet-frame features and every replica's activations per chunk
def score_jets(params: ScoreParams, model: xr.Dataset, jets: xr.Dataset) -> xr.Dataset:
    """Apply a stored tagger to any jets, chunk by chunk: score (replica, jet).

    Classifier: signal probability; autoencoder: reconstruction error (higher = more anomalous).
    """
    if "score" not in model.attrs or "architecture" not in model.attrs:
        raise OpError("input 'model' is not a tagger from lhc.train_classifier or lhc.anomaly_score")
    n = int(model.attrs["n_constituents"])
    jet_features(jets, n)  # the same checks as training
    arrays = [da.asarray(jets[name].data).rechunk({1: -1}) for name in MOMENTA]
    names = [*weight_names(model), "input_mean", "input_std"]
    weights = dask.delayed(_weight_arrays, pure=True)(**{k: as_delayed(model[k].data) for k in names})
    r = model.sizes[REPLICA]
    out = da.map_blocks(_score_block, *arrays, weights, json.loads(model.attrs["architecture"]),
                        model.attrs["score"], n, params.device, drop_axis=1, new_axis=0,
                        chunks=((r,), arrays[0].chunks[0]), dtype=np.float32,
                        meta=np.empty((0, 0), np.float32))  # meta: dask need not call torch to plan
    return xr.Dataset({params.name: ((REPLICA, JET), out), "label": jets["label"]},
                      coords={REPLICA: model[REPLICA].values, JET: jets[JET].values}
                      if JET in jets.coords else {REPLICA: model[REPLICA].values})
