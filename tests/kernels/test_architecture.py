"""The torch-free architecture description is exactly what the torch networks report."""

import numpy as np
import pytest

from engine.kernels import architecture as spec
from engine.kernels.mlp import ACTIVATIONS, INITIALISERS, EnsembleMLP, Positivity


def test_names_are_the_ones_the_torch_networks_implement():
    assert set(spec.ACTIVATION_NAMES) == set(ACTIVATIONS)
    assert set(spec.INITIALISER_NAMES) == set(INITIALISERS)


@pytest.mark.parametrize("kwargs", [
    {},
    {"init": "uniform", "positivity": Positivity(1.0, 2.0)},
    {"input_transform": "x_logx", "output_transform": "pdf_preprocessing",
     "replica_params": {"alpha": np.ones((2, 3)), "beta": np.ones((2, 3))}, "trainable_params": ["beta"]},
])
def test_description_equals_the_built_networks(kwargs):
    sizes, acts = [2, 5, 4, 3], ["tanh", "relu", "linear"]
    model = EnsembleMLP(2, sizes, acts, seed=4, **kwargs)
    options = {**kwargs, "replica_params": list(kwargs.get("replica_params", {}))}
    if "positivity" in kwargs:
        options["positivity"] = {"offset": 1.0, "scale": 2.0}
    assert spec.architecture(sizes, acts, 4, **options) == model.architecture()
    arrays = model.to_arrays()
    for k, (i, o) in enumerate(spec.layer_shapes(sizes)):
        assert arrays[f"weight_{k}"].shape == (2, i, o)
        assert arrays[f"bias_{k}"].shape == (2, 1, o)


def test_pdf_fit_and_eft_networks_are_described_without_building_them():
    from engine.kernels import eft  # noqa: F401 (registers the term networks' output transform)
    from engine.kernels.eft_toy import TERM_OUTPUT_TRANSFORM
    from engine.kernels.pdf_basis import fit_architecture
    from engine.kernels.pdf_fit import PdfFitConfig, build_model

    config = PdfFitConfig(("Sigma", "T3"), (7, 5), ("tanh", "tanh", "linear"), seed=9)
    assert fit_architecture(config.basis, config.hidden, config.activations, 9) == \
        build_model(3, config, "cpu").architecture()
    terms = EnsembleMLP(2, [2, 4, 1], ["tanh", "linear"], seed=1, output_transform=TERM_OUTPUT_TRANSFORM,
                        replica_params={"c_scale": np.ones(2)})
    assert spec.architecture([2, 4, 1], ["tanh", "linear"], 1, output_transform=TERM_OUTPUT_TRANSFORM,
                             replica_params=["c_scale"]) == terms.architecture()


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    (([2, 3, 1], ["tanh"]), {}, "2 layers need 2 activations"),
    (([2], []), {}, "sizes must list"),
    (([2, 3, 1], ["tahn", "linear"]), {}, "did you mean 'tanh'"),
    (([2, 3, 1], ["tanh", "linear"]), {"init": "glorot"}, "unknown initialiser"),
    (([2, 3, 1], ["tanh", "linear"], -1), {}, "seed"),
    (([2, 3, 1], ["tanh", "linear"]), {"trainable_params": ["a"]}, "not in replica_params"),
])
def test_bad_descriptions_are_value_errors(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        spec.architecture(*args, **kwargs)
