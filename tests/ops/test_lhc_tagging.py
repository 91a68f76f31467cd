"""Jet taggers end to end: the shipped recipe (half the steps, 3 replicas) on synthetic jets."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from ruamel.yaml import YAML
from scipy.stats import rankdata

import engine
from engine.errors import RecipeError, RunError
from engine.graph import compile_recipe
from engine.ingest.jet_tables import ingest_synthetic_jets
from engine.kernels.classifier import auc
from engine.kernels.jets_synth import jet_mass
from engine.ops.lhc_tagging import ClassifierParams, split_jets
from engine.storage import Lake
from engine.testing import put_in_lake, raise_if_computes
from tests.conftest import REPO

# Half the steps and 3 replicas; the networks and inputs as shipped: with fewer constituents,
# narrower layers or fewer jets the tagger no longer beats the jet mass (20 constituents: by 2
# sigma; 10k jets: tied; the 5k-jet, 20-constituent, [32, 32] setup that was here: 0.05 below it).
SMALL = {"epochs: 4000": "epochs: 2000", "replicas: 5": "replicas: 3"}
N_JETS = 20_000
SCORES = """  - id: scores
    op: lhc.score_jets
    inputs: {model: tagger, jets: jets}
"""


def small_recipe(folder, extra_outputs: str = "") -> str:
    text = (REPO / "recipes" / "lhc_top_tagging.yaml").read_text()
    for old, new in SMALL.items():
        assert old in text, old
        text = text.replace(old, new)
    text = text.replace("outputs:\n", SCORES + "outputs:\n" + extra_outputs)
    path = folder / "tagging.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    """20k synthetic jets through `ingest synthetic-jets` and the recipe, run once per module."""
    folder = tmp_path_factory.mktemp("tagging")
    lake = Lake(str(folder / "lake"))
    ingest_synthetic_jets(lake, "top_jets", N_JETS, seed=11, n_constituents=40, progress=False)
    recipe = small_recipe(folder, "  scores: {zone: derived}\n")
    return lake, recipe, engine.run(recipe, lake)


def test_compiling_computes_nothing(tagged, tmp_path):
    lake, recipe, _ = tagged
    fresh = Lake(str(tmp_path / "lake"))
    put_in_lake(fresh, "top_jets", lake.open("raw", "top_jets"))
    with raise_if_computes():
        plan = compile_recipe(recipe, fresh)
    assert plan.step("tagger").dataset["weight_0"].dims == ("replica", "in_0", "out_0")
    assert plan.step("tagger").dataset["weight_0"].shape == (3, 90, 64)


def paired_auc_difference(scores: np.ndarray, baseline: np.ndarray, labels: np.ndarray):
    """AUC(scores) - AUC(baseline) on the same jets, and its standard error (DeLong et al. 1988).

    Both AUCs are measured on the same jets, so their statistical errors are positively
    correlated and the difference is known better than their errors added in quadrature.
    """
    labels = labels.astype(bool)
    below_signal, below_background = [], []
    for s in (scores, baseline):
        x, y = s[labels], s[~labels]
        ranks = rankdata(np.r_[x, y])
        below_signal.append((ranks[: x.size] - rankdata(x)) / y.size)  # background below each signal
        below_background.append((ranks[x.size :] - rankdata(y)) / x.size)  # signal below each background
    d_signal = below_signal[0] - below_signal[1]
    d_background = below_background[0] - below_background[1]
    error = np.sqrt(d_signal.var(ddof=1) / d_signal.size + d_background.var(ddof=1) / d_background.size)
    return float(d_signal.mean()), float(error)


def test_classifier_beats_the_jet_mass(tagged):
    """Every replica's tagger beats the jet mass alone on the same test jets, by > 2 standard errors.

    On this stand-in the jet mass alone gives AUC 0.96: a tagger that learned less than the mass
    (any AUC threshold below that passes it) fails here. Measured: AUC 0.969-0.972, 0.010-0.013
    above the mass (+-0.003). A mass window |m - 175 GeV| reaches 0.975, above this reduced
    training; the shipped recipe on 100k jets (0.983) beats that too.
    """
    lake, recipe, summary = tagged
    assert {o.step: o.status for o in summary.outputs} == {"tagger": "computed", "anomaly": "computed",
                                                          "scores": "computed"}
    model = lake.open("models", "lhc-top-tagging/tagger").load()
    print({k: model[k].values.round(3).tolist() for k in ("auc", "accuracy", "background_rejection")})
    steps = YAML(typ="safe").load(recipe.read_text())["steps"]
    params = ClassifierParams(**next(s["params"] for s in steps if s["id"] == "tagger"))
    test = split_jets(N_JETS, params.test_fraction, params.validation_fraction, params.seed) == 2
    jets = lake.open("raw", "top_jets").isel(jet=test).load()
    mass = jet_mass(*(jets[c].values for c in ("E", "PX", "PY", "PZ")))
    labels = jets["label"].values
    scores = lake.open("derived", "lhc-top-tagging/scores")["score"].values[:, test]
    np.testing.assert_allclose([auc(s, labels) for s in scores], model["auc"], atol=1e-6)  # same jets
    print("mass AUC", round(auc(mass, labels), 4))
    for replica_scores in scores:
        difference, error = paired_auc_difference(replica_scores, mass, labels)
        print(f"tagger - mass: {difference:.4f} +- {error:.4f}")
        assert difference > 2 * error
    assert (model["accuracy"] > 0.78).all()
    assert (model["background_rejection"] > 20).all()  # 1/eps_B at eps_S = 0.3
    assert model["auc"].std() > 0  # bootstrap replicas give a spread
    eps_b = model["background_efficiency"]
    assert eps_b.dims == ("replica", "signal_efficiency")
    assert (eps_b.diff("signal_efficiency") >= 0).all() and ((eps_b >= 0) & (eps_b <= 1)).all()
    n_test = int(model["n_background_test"]) + int(model["n_signal_test"])
    assert n_test == int(test.sum())
    png = lake.path("reports/models/lhc-top-tagging/tagger/background_efficiency.png")
    assert lake.fs.exists(png) and lake.fs.size(png) > 10_000


def test_autoencoder_trained_on_background_flags_tops(tagged):
    """AUC > 0.7 for every replica: 0.5 is no information and its statistical error at ~6,000 test
    jets is ~0.005, so 0.7 is > 10 sigma; measured 0.976 on this stand-in."""
    lake, _, _ = tagged
    model = lake.open("models", "lhc-top-tagging/anomaly").load()
    assert model["weight_0"].shape == (3, 90, 32) and model["weight_3"].shape == (3, 32, 90)
    print({"anomaly auc": model["auc"].values.round(3).tolist()})
    assert (model["auc"] > 0.7).all()
    assert "accuracy" not in model


def test_score_jets_maps_the_stored_tagger_over_every_jet(tagged):
    lake, _, _ = tagged
    scores = xr.open_zarr(lake.entry_url("derived", "lhc-top-tagging/scores"), consolidated=False)
    assert scores["score"].dims == ("replica", "jet") and scores["score"].shape == (3, N_JETS)
    values = scores["score"].values
    assert ((values >= 0) & (values <= 1)).all()
    assert auc(values[0], scores["label"].values) > 0.9  # training jets included: above test AUC


def test_one_class_labels_are_a_clear_run_error(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    ingest_synthetic_jets(lake, "top_jets", 200, signal_fraction=1.0, n_constituents=20, progress=False)
    recipe = small_recipe(tmp_path)
    text = recipe.read_text().replace("n_constituents: 30", "n_constituents: 10")
    recipe.write_text(text)
    with pytest.raises(RunError, match=r"labels are all 1 \(200 jets\): a tagger needs signal"):
        engine.run(recipe, lake)
    assert not lake.exists("models", "lhc-top-tagging/tagger")


def test_bad_params_and_layouts_are_recipe_errors(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    ingest_synthetic_jets(lake, "top_jets", 50, n_constituents=10, progress=False)
    recipe = small_recipe(tmp_path)
    with pytest.raises(RecipeError, match="n_constituents=30 but the jets hold only 10 constituents"):
        compile_recipe(recipe, lake)
    recipe.write_text(recipe.read_text().replace("activations: [relu, relu, linear]",
                                                 "activations: [relu, linear]"))
    with pytest.raises(RecipeError, match="3 layers need 3 activations, found 2"):
        compile_recipe(recipe, lake)
    jets = lake.open("raw", "top_jets").drop_vars("label")
    put_in_lake(lake, "nolabel", jets)
    text = small_recipe(tmp_path).read_text().replace("raw/top_jets", "raw/nolabel")
    (tmp_path / "nolabel.yaml").write_text(text.replace("n_constituents: 30", "n_constituents: 5"))
    with pytest.raises(RecipeError, match="variable 'label' is not in the data"):
        compile_recipe(tmp_path / "nolabel.yaml", lake)
    put_in_lake(lake, "empty", lake.open("raw", "top_jets").isel(jet=slice(0, 0)))
    empty = (tmp_path / "nolabel.yaml").read_text().replace("raw/nolabel", "raw/empty")
    (tmp_path / "empty.yaml").write_text(empty)
    with pytest.raises(RecipeError, match=r"the jets dataset is empty \(0 jets\)"):
        compile_recipe(tmp_path / "empty.yaml", lake)


@pytest.mark.slow
def test_shipped_recipe_on_20k_jets(tmp_path):
    """The shipped recipe as is on 20k stand-in jets: every replica's AUC above 0.93 (the jet
    mass alone gives ~0.96 on this stand-in; the reference DNN on real jets 0.97)."""
    lake = Lake(str(tmp_path / "lake"))
    ingest_synthetic_jets(lake, "top_jets", 20_000, seed=3, progress=False)
    engine.run(REPO / "recipes" / "lhc_top_tagging.yaml", lake)
    tagger = lake.open("models", "lhc-top-tagging/tagger").load()
    anomaly = lake.open("models", "lhc-top-tagging/anomaly").load()
    print({k: tagger[k].values.round(3).tolist() for k in ("auc", "accuracy", "background_rejection")},
          {"anomaly auc": anomaly["auc"].values.round(3).tolist()})
    assert (tagger["auc"] > 0.93).all() and (anomaly["auc"] > 0.7).all()


DECORRELATED = {"epochs: 2000": "epochs: 300", "max_jets: 50000": "max_jets: 4000",
                "n_constituents: 30": "n_constituents: 10", "hidden: [64, 64]": "hidden: [32, 32]",
                "lr: 0.001\n      replicas": "lr: 0.003\n      replicas",
                "validation_every: 50": "validation_every: 25",
                "steps: 3, pretrain: 200": "steps: 3, pretrain: 100",
                "strength: 10.0, bins: 10, hidden: [32], lr: 0.001":
                "strength: 10.0, bins: 10, hidden: [32], lr: 0.003"}


def test_mass_adversary_reduces_background_mass_sculpting(tmp_path):
    """The decorrelation recipe shrunk (4000 jets, 300 steps, lambda 0 and 10 only): the JSD of
    the background jet mass before/after the eps_S = 0.5 cut, averaged over the 3 replicas (each
    its own seed), falls below half of the plain tagger's. Measured at this size: 0.65-0.72
    (lambda 0) vs 0.22-0.38 (lambda 10; the kernel test saw single replicas from 0.01 to 0.6:
    the min-max game varies by seed, hence the pooled mean)."""
    lake = Lake(str(tmp_path / "lake"))
    ingest_synthetic_jets(lake, "top_jets", 4000, seed=3, n_constituents=20, progress=False)
    text = (REPO / "recipes" / "lhc_decorrelated_tagging.yaml").read_text()
    for old, new in DECORRELATED.items():
        assert old in text, old
        text = text.replace(old, new)
    lambda1 = text[text.index("  - id: lambda1"):text.index("  - id: lambda10")]
    text = text.replace(lambda1, "").replace(text[text.index("  lambda1:\n"):text.index("  lambda10:\n")], "")
    recipe = tmp_path / "decorrelated.yaml"
    recipe.write_text(text)
    engine.run(recipe, lake)
    plain = lake.open("models", "lhc-decorrelated-tagging/lambda0").load()
    adversarial = lake.open("models", "lhc-decorrelated-tagging/lambda10").load()
    print({k: (plain[k].values.round(3).tolist(), adversarial[k].values.round(3).tolist())
           for k in ("auc", "background_rejection", "mass_jsd")})
    assert float(adversarial["mass_jsd"].mean()) < 0.5 * float(plain["mass_jsd"].mean())
    # the price: less separation (measured AUC 0.92 -> 0.85; the rejection at eps_S = 0.3 counts
    # a handful of the ~600 test background jets here, too few to rank the two)
    assert float(adversarial["auc"].mean()) < float(plain["auc"].mean())
    assert (plain["auc"] > 0.85).all()  # the plain tagger works (mass alone: ~0.96 on the stand-in)


@pytest.mark.slow
@pytest.mark.long  # ~3 min quiet: out of .ci/run; the adversary test above is its default-suite version
def test_shipped_decorrelation_recipe_full_size(tmp_path):
    """The decorrelation recipe as shipped (50k stand-in jets, lambda = 0, 1, 10, 3 replicas each;
    ~3 min on 2 cores): the README's numbers. Measured: mass JSD 0.69-0.81 / 0.49-0.54 /
    0.38-0.49 and AUC 0.983-0.985 / 0.973-0.976 / 0.959-0.962. Bounds on the replica means: the
    JSD falls with lambda (lambda 10 below 3/4 of lambda 0's), and so does the AUC."""
    lake = Lake(str(tmp_path / "lake"))
    ingest_synthetic_jets(lake, "top_jets", 50_000, progress=False)
    engine.run(REPO / "recipes" / "lhc_decorrelated_tagging.yaml", lake)
    models = {s: lake.open("models", f"lhc-decorrelated-tagging/lambda{s}").load() for s in (0, 1, 10)}
    means = {
        s: {k: float(m[k].mean()) for k in ("auc", "background_rejection", "mass_jsd")}
        for s, m in models.items()
    }
    print(means)
    assert means[10]["mass_jsd"] < 0.75 * means[0]["mass_jsd"]
    assert means[1]["mass_jsd"] < means[0]["mass_jsd"]
    assert means[10]["auc"] < means[0]["auc"]
    assert all((m["mass_jsd"] >= 0).all() and (m["mass_jsd"] <= 1).all() for m in models.values())


def test_adversary_option_runs_through_the_op_and_reports_sculpting(tmp_path):
    """The op's wiring on 300 jets, a few steps: mass_jsd per replica in [0, 1], and the option
    changes the training (the adversary's penalty moves the weights)."""
    from engine.kernels.jets_synth import simulate_jets
    from engine.registry import StepContext, get_op

    jets = simulate_jets(300, seed=2, n_constituents=8)
    data = xr.Dataset({name: (("jet", "constituent")[: value.ndim], value) for name, value in jets.items()})
    op = get_op("lhc.train_classifier")
    settings = {"n_constituents": 4, "hidden": [8], "activations": ["relu", "linear"], "epochs": 20,
                "replicas": 2, "device": "cpu", "resample": "seeds"}
    models = {}
    adversary = {"adversary": {"strength": 5.0, "bins": 4, "pretrain": 5}}
    for name, extra in (("plain", {}), ("adversary", adversary)):
        context = StepContext(name, name, str(tmp_path / "lake"))
        model = op.func(op.params(**settings, **extra), data.chunk({"jet": 100}), context=context)
        models[name] = model.compute()
    for model in models.values():
        assert ((model["mass_jsd"] >= 0) & (model["mass_jsd"] <= 1)).all()
    assert not np.allclose(models["plain"]["weight_0"], models["adversary"]["weight_0"])


def test_bad_adversary_params_are_recipe_errors(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    recipe = tmp_path / "bad.yaml"
    text = (REPO / "recipes" / "lhc_decorrelated_tagging.yaml").read_text()
    recipe.write_text(text.replace("strength: 10.0", "strength: -1.0"))
    with pytest.raises(RecipeError, match="strength"):
        compile_recipe(recipe, lake)
    typo = "steps: 3, pretrain: 200}\n  - id: lambda10"
    recipe.write_text(text.replace(typo, typo.replace("steps:", "step:")))
    with pytest.raises(RecipeError, match="step"):
        compile_recipe(recipe, lake)
