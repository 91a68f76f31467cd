"""replicas.hyperopt over the workloads' training ops: eels.train_zlp, lhc.train_classifier,
amp.train (engine/ops/hyperopt_workloads.py). Per adapter: a tiny scan runs and scores against
a known truth, an interrupted scan resumes from the study in the lake, a bad space fails."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import xarray as xr
import yaml

import engine
import engine.ops.hyperopt_adapters as adapters
from engine.errors import RecipeError
from engine.graph import compile_recipe
from engine.kernels.kfold import fold_assignment
from engine.ops.amp import AmpTrainParams
from engine.ops.hyperopt import winner_fragment
from engine.ops.lhc_tagging import ClassifierParams
from engine.storage import Lake
from engine.testing import put_in_lake, raise_if_computes
from tests.conftest import REPO

SOURCES = {
    "eels.train_zlp": "{image: {catalog: lake, entry: raw/aligned}, clusters: {catalog: lake, entry: "
    "raw/clusters}, windows: {catalog: lake, entry: raw/windows}}",
    "lhc.train_classifier": "{jets: {catalog: lake, entry: raw/jets}}",
    "amp.train": "{}",
}
STEPS = {
    "amp.train": "  - {id: sample, op: amp.sample, params: {n_points: 1200, chunk_points: 600, seed: 1}}\n"
}
INPUTS = {
    "eels.train_zlp": "{data: image, clusters: clusters, windows: windows}",
    "lhc.train_classifier": "{data: jets}",
    "amp.train": "{data: sample}",
}
# small networks, few epochs: each fold trains in about a second (2 cores)
BASE = {
    "eels.train_zlp": "{n_spectra: 40, epochs: 1200, validation_every: 20, device: cpu, seed: 7, "
    "stopping: {threshold: 50}}",
    "lhc.train_classifier": "{n_constituents: 10, hidden: [16, 16], epochs: 300, batch_size: 256, "
    "device: cpu}",
    "amp.train": "{hidden: [16, 16], epochs: 300, batch_size: 256, validation_every: 50, device: cpu}",
}
LR = {"eels.train_zlp": "optimiser.lr", "lhc.train_classifier": "lr", "amp.train": "optimiser.lr"}
GOOD = {
    "eels.train_zlp": "{hidden.*: {low: 6, high: 9, integer: true}, optimiser.lr: {low: 0.01, high: 0.02}}",
    "lhc.train_classifier": "{lr: {low: 0.001, high: 0.005, log: true}}",
    "amp.train": "{optimiser.lr: {low: 0.003, high: 0.006, log: true}}",
}
RECIPE = """
version: 1
name: scan
sources: {sources}
steps:
{steps}  - id: scan
    op: replicas.hyperopt
    inputs: {inputs}
    params:
      op: {op}
      base: {base}
      space: {space}
      folds: {{k: 2, seed: 1}}
      trials: {trials}
      startup_trials: 2
      replicas: 3
      seed: 1{extra}
outputs:
  scan: {{zone: derived}}
"""


def recipe(write_recipe, op, space=None, trials=2, extra="", name="recipe.yaml"):
    text = RECIPE.format(
        sources=SOURCES[op], steps=STEPS.get(op, ""), inputs=INPUTS[op], op=op, base=BASE[op],
        space=space or GOOD[op], trials=trials, extra=extra,
    )  # fmt: skip
    return write_recipe(text, name)


@pytest.fixture(scope="module")
def eels_inputs(tmp_path_factory):
    """A 12 x 12 synthetic image aligned, in 2 clusters, with ZLP windows (computed once)."""
    from engine.ingest.synthetic_eels import ingest_synthetic_eels

    folder = tmp_path_factory.mktemp("eels")
    lake = Lake(str(folder / "lake"))
    ingest_synthetic_eels(lake, "img", (12, 12, 384), seed=5, chunks=(6, 6), progress=False)
    (folder / "chain.yaml").write_text("""
version: 1
name: chain
sources: {image: {catalog: lake, entry: raw/img}}
steps:
  - {id: aligned, op: eels.align_zlp, inputs: {image: image}}
  - {id: clusters, op: eels.cluster, inputs: {image: aligned}, params: {n_clusters: 2, seed: 1}}
  - {id: windows, op: eels.zlp_windows, inputs: {image: aligned, clusters: clusters},
     params: {n_sample: 40, seed: 2}}
outputs: {aligned: {zone: derived}, clusters: {zone: derived}, windows: {zone: derived}}
""")
    engine.run(folder / "chain.yaml", lake)
    return {name: lake.open("derived", f"chain/{name}").load() for name in ("aligned", "clusters", "windows")}


@pytest.fixture
def inputs(lake, eels_inputs):
    """The lake holding every workload's inputs."""
    from engine.kernels.jets_synth import simulate_jets

    for name, dataset in eels_inputs.items():
        put_in_lake(lake, name, xr.Dataset(dataset.data_vars, dataset.coords))
    jets = simulate_jets(1600, seed=11, n_constituents=12)
    put_in_lake(lake, "jets", xr.Dataset({k: (("jet", "constituent")[: v.ndim], v) for k, v in jets.items()}))
    return lake


def scan(lake, path) -> xr.Dataset:
    engine.run(path, lake)
    return lake.open("derived", "scan/scan").load()


# -- known truths, per adapter ------------------------------------------------------------------
def test_tagger_scan_beats_a_constant_and_its_baseline_is_the_label_entropy(inputs, write_recipe):
    path = recipe(write_recipe, "lhc.train_classifier")
    with raise_if_computes():
        compile_recipe(path, inputs)
    out = scan(inputs, path)
    assert out["held_out"].attrs["metric"] == "bce" and out.attrs["metric"] == "bce"
    # the constant's cross-entropy is the entropy of the held-out labels at the training fraction
    labels = inputs.open("raw", "jets")["label"].values.astype(int)
    fold = fold_assignment(labels.size, 2, seed=1)
    for f in range(2):
        held = labels[fold == f]
        p = labels[fold != f].mean()  # ~ the training jets' fraction (the validation share aside)
        entropy = -np.mean(np.where(held == 1, np.log(p), np.log(1 - p)))
        assert out["baseline_held_out"][0, f] == pytest.approx(entropy, abs=0.01)
    # measured: held-out BCE 0.42-0.45 against ln 2 = 0.69 for a constant (the tagger separates)
    best = int(out["best_trial"])
    assert best >= 0 and out["ok"].all()
    assert 0.2 < float(out["reward"][best]) < float(out["baseline_held_out"][best].mean()) - 0.1
    fragment = yaml.safe_load(winner_fragment(out))
    params = ClassifierParams.model_validate(fragment["params"])
    assert params.lr == pytest.approx(float(out["p_lr"][best]))


def test_amp_scan_beats_a_constant_in_held_out_likelihood(inputs, write_recipe):
    out = scan(inputs, recipe(write_recipe, "amp.train"))
    assert out.attrs["metric"] == "nll" and out["ok"].all()
    # the constant: a Gaussian in ln |M|^2 at the training mean and spread; ln |M|^2 spans ~4
    # units here, so its NLL is ~1.7 nats; the networks measured -0.9 (sigma a few % of |M|^2)
    baseline = out["baseline_held_out"].values
    assert np.all((baseline > 1.0) & (baseline < 2.5))
    best = int(out["best_trial"])
    assert float(out["reward"][best]) < float(baseline[best].mean()) - 1.0
    AmpTrainParams.model_validate(yaml.safe_load(winner_fragment(out))["params"])


SHRINK_ZLP = {
    "{catalog: eels, entry: synthetic_demo}": "{catalog: lake, entry: raw/img}",
    "n_clusters: 5": "n_clusters: 2",
    "n_sample: 300": "n_sample: 40",
    "base: {n_spectra: 300, epochs: 3000, seed: 7, device: auto}": f"base: {BASE['eels.train_zlp']}",
    "hidden.*: {low: 5, high: 20,": "hidden.*: {low: 6, high: 9,",
    "folds: {k: 3,": "folds: {k: 2,",
    "trials: 12": "trials: 2",
    "startup_trials: 4": "startup_trials: 2",
    "replicas: 10": "replicas: 3",
}


def test_the_shipped_zlp_scan_shrunk_scores_unseen_spectra_against_the_cluster_median(lake, write_recipe):
    from engine.ingest.synthetic_eels import ingest_synthetic_eels

    ingest_synthetic_eels(lake, "img", (12, 12, 384), seed=5, chunks=(6, 6), progress=False)
    text = (REPO / "recipes" / "hyperopt_eels_zlp.yaml").read_text()
    for old, new in SHRINK_ZLP.items():
        assert old in text, old
        text = text.replace(old, new)
    engine.run(write_recipe(text), lake)
    out = lake.open("derived", "hyperopt-eels-zlp/scan").load()
    assert out.attrs["metric"] == "chi2" and out.attrs["training_op"] == "eels.train_zlp"
    # folds split each cluster's sampled spectra: 2 clusters x 40 spectra at most, evenly
    assert out["fold_points"].sum() <= 80 and abs(int(out["fold_points"][0] - out["fold_points"][1])) <= 2
    # the median ZLP's held-out chi2/n is O(1) by construction of the errors (half the P16-P84
    # spread of ln I over the cluster, floored at Poisson; the tail targets add 0): measured
    # 0.45-2.3 per fold with a few dozen spectra per cluster, whose P16-P84 is itself noisy
    baseline = out["baseline_held_out"].values
    assert np.all((baseline > 0.2) & (baseline < 3.0))
    kept = out["kept_fraction"].values > 0
    assert np.all(out["held_out"].values[kept] > 0) and np.all(np.isfinite(out["held_out"].values[kept]))
    for name in ("reward", "reward_vs_optimiser_lr", "reward_vs_hidden_all"):
        assert lake.fs.exists(lake.entry_path("reports", f"derived/hyperopt-eels-zlp/scan/{name}.png"))


# -- every adapter: a bad space fails, an interrupted scan resumes ---------------------------------
@pytest.mark.parametrize("op", ["eels.train_zlp", "lhc.train_classifier", "amp.train"])
def test_a_space_of_only_lr_10_is_reported_failing(op, inputs, write_recipe):
    out = scan(inputs, recipe(write_recipe, op, space=f"{{{LR[op]}: {{choices: [10.0]}}}}", trials=1))
    assert not out["ok"].values.any() and int(out["best_trial"]) == -1
    assert winner_fragment(out) == ""


def kill_in_trial_2(monkeypatch, op: str) -> list[str]:
    """Make the op's adapter raise in trial 2's first fold (2 folds); returns the folds called."""
    adapter, calls = adapters.ADAPTERS[op], []

    def killed_in_trial_2(*args):
        calls.append(args[3].op)
        if len(calls) == 3:  # trial 2, fold 0
            raise RuntimeError("killed mid-scan")
        return adapter.fold(*args)

    monkeypatch.setitem(adapters.ADAPTERS, op, dataclasses.replace(adapter, fold=killed_in_trial_2))
    return calls


@pytest.mark.parametrize("op", ["eels.train_zlp", "lhc.train_classifier", "amp.train"])
def test_an_interrupted_scan_resumes_from_the_study_in_the_lake(
    op, inputs, write_recipe, monkeypatch, tmp_path
):
    adapter, calls = adapters.ADAPTERS[op], kill_in_trial_2(monkeypatch, op)
    path = recipe(write_recipe, op)  # the mechanics only: a quarter of the epochs
    path.write_text(
        path.read_text().replace("epochs: 1200", "epochs: 300").replace("epochs: 300,", "epochs: 80,")
    )
    with pytest.raises(RuntimeError, match="killed mid-scan"):
        engine.run(path, inputs)
    out = scan(inputs, path)
    assert len(calls) == 3 + 2  # trial 1 came from the lake: only trial 2 ran again
    monkeypatch.setitem(adapters.ADAPTERS, op, adapter)
    other = Lake(str(tmp_path / "other"))
    for name in ("aligned", "clusters", "windows", "jets"):
        put_in_lake(other, name, inputs.open("raw", name).load())
    fresh = scan(other, path)
    for name in ("reward", *(v for v in out.data_vars if v.startswith("p_"))):
        np.testing.assert_allclose(out[name].values, fresh[name].values, err_msg=name)


TRAINING_INPUTS = {
    "eels.train_zlp": "{image: image, clusters: clusters, windows: windows}",
    "lhc.train_classifier": "{jets: jets}",
    "amp.train": "{data: sample}",
}


@pytest.mark.parametrize("op", ["eels.train_zlp", "lhc.train_classifier", "amp.train"])
def test_compiling_a_scan_computes_nothing_and_projects_one_training(op, inputs, write_recipe):
    """The scan holds one fold's training at a time: its projected need is the training op's own
    at the widest searched layers (the same terms; the ZLP's and amplitudes' are the same code)."""
    from engine.projection import project

    params = yaml.safe_load(BASE[op]) | {"replicas": 3}
    if op == "eels.train_zlp":
        params["hidden"] = [9, 9, 9]  # GOOD's top width
    text = RECIPE.split("  - id: scan")[0].format(sources=SOURCES[op], steps=STEPS.get(op, ""))
    text += f"  - {{id: train, op: {op}, inputs: {TRAINING_INPUTS[op]}, params: {json.dumps(params)}}}\n"
    text += "outputs: {train: {zone: models}}\n"
    with raise_if_computes():
        scan_need = project(compile_recipe(recipe(write_recipe, op), inputs)).step_bytes("scan")
        train_need = project(compile_recipe(write_recipe(text, "train.yaml"), inputs)).step_bytes("train")
    assert 0.7 < scan_need / train_need < 1.3, (scan_need, train_need)


# -- bad input ---------------------------------------------------------------------------------
def test_an_op_without_an_adapter_is_refused_naming_the_supported_ones(inputs, write_recipe):
    path = recipe(write_recipe, "amp.train")
    path.write_text(path.read_text().replace("op: amp.train", "op: amp.trian"))
    with pytest.raises(
        RecipeError,
        match=r"cannot scan op 'amp.trian' \(did you mean 'amp.train'.*"
        r"supported training ops: amp.train, calo.train_flow, eels.train_zlp, lhc.anomaly_score, "
        r"lhc.eft_train, lhc.omnifold, lhc.train_classifier, pdf.fit, replicas.train, solve.bounce, "
        r"solve.equation",
    ):
        compile_recipe(path, inputs)


@pytest.mark.parametrize(
    "op, extra, message",
    [
        (
            "lhc.train_classifier",
            "\n      reward: {metric: bse}",
            r"reward.metric 'bse' is not a metric of lhc.train_classifier \(did you mean 'bce'",
        ),
        ("amp.train", "\n      reward: {metric: chi2}", r"expected one of nll, mse"),
        (
            "eels.train_zlp",
            "\n      reward: {metric: chi2}\n      folds: {k: 2, by: group, group: g}",
            r"folds by: group is not available for eels.train_zlp; expected one of points",
        ),
    ],
)
def test_a_metric_or_fold_the_op_lacks_is_refused(op, extra, message, inputs, write_recipe):
    text = recipe(write_recipe, op, extra=extra).read_text()
    if "by: group" in extra:
        text = text.replace("      folds: {k: 2, seed: 1}\n", "")
    with pytest.raises(RecipeError, match=message):
        compile_recipe(write_recipe(text, "bad.yaml"), inputs)


def test_a_param_fixed_per_scan_cannot_be_searched(inputs, write_recipe):
    path = recipe(
        write_recipe, "lhc.train_classifier", space="{n_constituents: {low: 5, high: 10, integer: true}}"
    )
    with pytest.raises(RecipeError, match=r"'n_constituents' of lhc.train_classifier is set once per scan"):
        compile_recipe(path, inputs)


def test_missing_or_unused_inputs_are_named(inputs, write_recipe):
    text = recipe(write_recipe, "eels.train_zlp").read_text()
    with pytest.raises(RecipeError, match=r"op: eels.train_zlp needs the input 'windows'"):
        compile_recipe(write_recipe(text.replace(", windows: windows}", "}"), "a.yaml"), inputs)
    text = (
        recipe(write_recipe, "amp.train")
        .read_text()
        .replace("{data: sample}", "{data: sample, theory: sample}")
    )
    with pytest.raises(
        RecipeError, match=r"input 'theory' is not used when scanning amp.train; it takes data"
    ):
        compile_recipe(write_recipe(text, "b.yaml"), inputs)


def test_stratified_folds_hold_every_stratum_and_refuse_a_small_one():
    strata = np.repeat([0, 1, 2], [7, 5, 9])
    fold = adapters.stratified_folds(strata, 2, seed=3)
    for s, n in enumerate((7, 5, 9)):
        assert sorted(np.bincount(fold[strata == s], minlength=2).tolist()) == [n // 2, n - n // 2]
    counts = np.bincount(fold)
    assert abs(int(counts[0]) - int(counts[1])) <= 1  # the rotation per stratum evens the sizes
    with pytest.raises(ValueError, match="stratum 1 has 1 units for 2 folds"):
        adapters.stratified_folds(np.array([0, 0, 1]), 2, seed=0)


def test_a_zlp_fold_trains_on_no_held_out_spectrum(eels_inputs, monkeypatch):
    """The fold split does not leak: the training set a fold builds holds only the spectra of the
    other folds (distinct pixels: the cluster sample draws without replacement)."""
    import dask

    import engine.kernels.zlp as zlp
    from engine.ops.hyperopt import HyperoptParams, _training

    hyper = HyperoptParams.model_validate(
        {"op": "eels.train_zlp", "base": yaml.safe_load(BASE["eels.train_zlp"]), "replicas": 3,
         "space": yaml.safe_load(GOOD["eels.train_zlp"])}
    )  # fmt: skip
    adapter = adapters.ADAPTERS["eels.train_zlp"]
    inputs = {
        "data": eels_inputs["aligned"],
        "clusters": eels_inputs["clusters"],
        "windows": eels_inputs["windows"],
    }
    pieces, _ = adapter.prepare(hyper, _training(hyper, {}), inputs)
    loaded = adapter.load(dask.compute(pieces)[0])
    spectra = loaded.arrays["spectra"]
    assert len(np.unique(spectra, axis=0)) == len(spectra)  # no pixel drawn twice
    fold = adapters.stratified_folds(loaded.strata, 2, seed=1)
    seen = []

    def capture(fitted, *args, **kwargs):
        seen.append(np.concatenate(fitted))
        raise RuntimeError("captured")

    monkeypatch.setattr(zlp, "zlp_training_set", capture)
    for f in range(2):
        with pytest.raises(RuntimeError, match="captured"):
            adapter.fold(loaded.arrays, _training(hyper, {}), fold == f, hyper, "chi2")
        held = {row.tobytes() for row in spectra[fold == f]}
        assert len(seen[f]) == int((fold != f).sum()) and not any(row.tobytes() in held for row in seen[f])
