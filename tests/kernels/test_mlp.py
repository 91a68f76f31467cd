"""EnsembleMLP: batched replicas behave exactly like separately built single networks."""

import json

import numpy as np
import pytest
import torch

from engine.kernels.mlp import ACTIVATIONS, EnsembleMLP, Positivity, resolve_device

torch.set_num_threads(1)

NP_ACTS = {
    "tanh": np.tanh,
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
    "relu": lambda z: np.maximum(z, 0),
    "linear": lambda z: z,
}
EELS = ([2, 10, 15, 5, 1], ["sigmoid", "sigmoid", "relu", "linear"])
PDF = ([2, 25, 20, 8], ["tanh", "tanh", "linear"])
WIDE = ([2, 64, 1], ["tanh", "linear"])  # with 4100 points: one replica per pass on CPU


def numpy_forward(arrays, acts, x):
    """Reference forward from exported arrays: h = act(h @ W[r] + b[r]), points-major."""
    h = np.broadcast_to(x, (arrays["weight_0"].shape[0], *x.shape[-2:]))
    for k, act in enumerate(acts):
        h = NP_ACTS[act](h @ arrays[f"weight_{k}"] + arrays[f"bias_{k}"])
    return h


@pytest.mark.parametrize(("net", "n_points"), [(EELS, 50), (PDF, 50), (WIDE, 4100)])
@pytest.mark.parametrize("shared_input", [True, False])
def test_batched_outputs_and_gradients_equal_single_models(net, n_points, shared_input):
    sizes, acts = net
    r = 4
    gen = torch.Generator().manual_seed(0)
    shape = (n_points, 2) if shared_input else (r, n_points, 2)
    x = torch.rand(shape, generator=gen, dtype=torch.float64)
    target = torch.randn(r, n_points, sizes[-1], generator=gen, dtype=torch.float64)
    ens = EnsembleMLP(r, sizes, acts, seed=3, dtype=torch.float64, init="uniform")
    out = ens(x)
    (grad,) = torch.autograd.grad(((out - target) ** 2).sum(), ens.flat)
    ref = numpy_forward(ens.to_arrays(), acts, x.numpy())
    np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-12, atol=1e-12)
    for k in range(r):
        single = EnsembleMLP.single(k, sizes, acts, seed=3, dtype=torch.float64, init="uniform")
        xk = x if shared_input else x[k : k + 1]
        out_k = single(xk)
        (grad_k,) = torch.autograd.grad(((out_k - target[k]) ** 2).sum(), single.flat)
        torch.testing.assert_close(out_k[0], out[k], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad_k[0], grad[k], rtol=1e-10, atol=1e-12)


def test_replica_weights_depend_only_on_seed_and_replica_index():
    big = EnsembleMLP(50, *PDF, seed=11).to_arrays()
    chunk = EnsembleMLP(10, *PDF, seed=11, replica_ids=range(30, 40)).to_arrays()
    alone = EnsembleMLP.single(37, *PDF, seed=11).to_arrays()
    for key in ("weight_0", "bias_0", "weight_2"):
        np.testing.assert_array_equal(alone[key][0], big[key][37])
        np.testing.assert_array_equal(chunk[key], big[key][30:40])
    other = EnsembleMLP(50, *PDF, seed=12).to_arrays()
    assert not np.array_equal(other["weight_1"], big["weight_1"])
    assert not np.array_equal(big["weight_1"][0], big["weight_1"][1])


def test_unknown_names_suggest_the_closest():
    with pytest.raises(ValueError, match="did you mean 'sigmoid'"):
        EnsembleMLP(2, [1, 3, 1], ["sigmod", "linear"])
    with pytest.raises(ValueError, match="did you mean 'pdf_preprocessing'"):
        EnsembleMLP(2, [1, 3, 1], ["tanh", "linear"], output_transform="pdf_preprocesing")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_replicas": 0}, "n_replicas must be positive"),
        ({"activations": ["tanh"]}, "need 2 activations"),
        ({"sizes": [2]}, "sizes must list"),
        ({"seed": -1}, "seed"),
        ({"replica_ids": [0, 1, 2]}, "replica_ids"),
        ({"replica_params": {"a": np.ones(3)}}, "leading dim 2"),
        ({"replica_params": {"a": np.ones(2)}, "trainable_params": ["b"]}, "not in replica_params"),
        ({"positive_outputs": [1]}, "positive_outputs must be distinct indices below 1"),
        ({"positive_outputs": [0, 0]}, "positive_outputs must be distinct"),
    ],
)
def test_constructor_errors(kwargs, message):
    args = {"n_replicas": 2, "sizes": [1, 3, 1], "activations": ["tanh", "linear"], **kwargs}
    with pytest.raises(ValueError, match=message):
        EnsembleMLP(**args)


def test_positive_outputs_are_softplus_of_the_layers_and_survive_the_arrays():
    """Outputs named positive are softplus of the layers' output (before the output transform),
    the others untouched; from_arrays rebuilds the same network, and an architecture without
    positive outputs reads as before (no key)."""
    model = EnsembleMLP(3, *PDF, seed=5, positive_outputs=[1, 3])
    x = torch.linspace(0.1, 0.9, 7, dtype=model.dtype)[:, None].expand(7, 2).contiguous()
    with torch.no_grad():
        raw, out = model.raw(x), model(x)
    assert (raw[..., [1, 3]] < 0).any()
    assert torch.equal(out[..., [0, 2, 4, 5, 6, 7]], raw[..., [0, 2, 4, 5, 6, 7]])
    assert torch.allclose(out[..., [1, 3]], torch.nn.functional.softplus(raw[..., [1, 3]]))
    architecture = json.loads(json.dumps(model.architecture()))
    assert architecture["positive_outputs"] == [1, 3] and not model.supports_layers_backward
    rebuilt = EnsembleMLP.from_arrays(model.to_arrays(), architecture)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), out)
    assert "positive_outputs" not in EnsembleMLP(3, *PDF).architecture()


def test_input_shape_errors():
    model = EnsembleMLP(3, [2, 4, 1], ["tanh", "linear"])
    with pytest.raises(ValueError, match="input must be"):
        model(torch.rand(2, 5, 2))
    with pytest.raises(ValueError, match="expects 2 input features"):
        model(torch.rand(5, 3))


def test_reinitialise_redraws_only_selected_replicas_reproducibly():
    model = EnsembleMLP(5, *EELS, seed=4)
    before = model.to_arrays()
    model.reinitialise([False, True, False, False, True])
    after = model.to_arrays()
    for k in range(5):
        same = np.array_equal(before["weight_1"][k], after["weight_1"][k])
        assert same == (k not in (1, 4))
    np.testing.assert_array_equal(after["generation"], [0, 1, 0, 0, 1])
    alone = EnsembleMLP.single(4, *EELS, seed=4)
    alone.reinitialise([True])
    np.testing.assert_array_equal(alone.to_arrays()["weight_1"][0], after["weight_1"][4])
    with pytest.raises(ValueError, match="mask must have shape"):
        model.reinitialise([True])


def test_export_round_trip_is_plain_data_and_exact():
    r = 3
    alpha = np.linspace(0.1, 0.3, r * 2).reshape(r, 2)
    beta = np.full((r, 2), 3.0)
    model = EnsembleMLP(
        r,
        [2, 6, 2],
        ["tanh", "linear"],
        seed=5,
        input_transform="x_logx",
        output_transform="pdf_preprocessing",
        replica_params={"alpha": alpha, "beta": beta},
        trainable_params=["alpha"],
        positivity=Positivity(offset=1.0, scale=0.5),
    )
    arrays, arch = model.to_arrays(), model.architecture()
    assert all(isinstance(v, np.ndarray) for v in arrays.values())
    assert arrays["weight_0"].shape == (r, 2, 6) and arrays["bias_1"].shape == (r, 1, 2)
    arch = json.loads(json.dumps(arch))
    again = EnsembleMLP.from_arrays(arrays, arch)
    x = torch.linspace(0.01, 0.9, 7)[:, None]
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
    assert [n for n, _ in again.named_parameters()] == ["flat", "param_alpha"]
    with pytest.raises(ValueError, match="shape"):
        EnsembleMLP.from_arrays({**arrays, "weight_0": arrays["weight_0"][:, :1]}, arch)


def test_pdf_preprocessing_multiplies_the_network_and_trains_its_exponents():
    r = 2
    alpha = torch.tensor([[0.2, 0.5], [1.1, 0.3]], dtype=torch.float64)
    beta = torch.tensor([[3.0, 2.0], [4.0, 1.5]], dtype=torch.float64)
    kwargs = {"seed": 1, "dtype": torch.float64, "input_transform": "x_logx"}
    plain = EnsembleMLP(r, [2, 5, 2], ["tanh", "linear"], **kwargs)
    pre = EnsembleMLP(
        r,
        [2, 5, 2],
        ["tanh", "linear"],
        **kwargs,
        output_transform="pdf_preprocessing",
        replica_params={"alpha": alpha, "beta": beta},
        trainable_params=["alpha", "beta"],
    )
    x = torch.linspace(0.01, 0.95, 9, dtype=torch.float64)[:, None]
    factor = x.pow(1 - alpha[:, None, :]) * (1 - x).pow(beta[:, None, :])
    torch.testing.assert_close(pre(x), plain(x) * factor)
    grads = torch.autograd.grad(pre(x).sum(), [pre.param_alpha, pre.param_beta])
    assert all(g.abs().min() > 0 for g in grads)


def test_positivity_is_smooth_and_strict():
    constraint = Positivity(offset=1.0, scale=-2.0)
    raw = torch.linspace(-50, 50, 101, dtype=torch.float64, requires_grad=True)
    y = constraint(raw)
    constrained = 1.0 - 2.0 * y  # equals softplus(1 - 2 raw) exactly, up to rounding
    assert torch.all(constrained >= 0)
    assert torch.all(constrained[raw.abs() <= 5] > 0)
    (grad,) = torch.autograd.grad(y.sum(), raw)
    assert torch.all(grad > 0)
    far_inside = raw < -5
    torch.testing.assert_close(y[far_inside], raw[far_inside], rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="non-zero"):
        Positivity(scale=0.0)
    model = EnsembleMLP(3, [1, 4, 1], ["tanh", "linear"], positivity=Positivity())
    assert torch.all(model(torch.linspace(-50, 50, 11)[:, None] * 100) >= 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_tanh_matches_torch_tanh(dtype):
    z = torch.linspace(-20, 20, 4001, dtype=dtype)
    zz = z.clone().requires_grad_()
    y = ACTIVATIONS["tanh"](zz * 1)
    (grad,) = torch.autograd.grad(y.sum(), zz)
    atol = 2e-7 if dtype == torch.float32 else 1e-15
    torch.testing.assert_close(y, torch.tanh(z), rtol=0, atol=atol)
    torch.testing.assert_close(grad, 1 - torch.tanh(z) ** 2, rtol=0, atol=4 * atol)


def test_input_derivatives_can_be_trained_through():
    """Derivative penalties (EELS: ReLU(d ln I / dE)) need double backward through the network."""
    model = EnsembleMLP(2, [1, 5, 3, 1], ["tanh", "sigmoid", "linear"], seed=3, dtype=torch.float64)
    x = torch.linspace(0.1, 0.9, 4, dtype=torch.float64)[:, None]

    def penalty(flat):
        xx = x.clone().requires_grad_()
        out = torch.func.functional_call(model, {"flat": flat}, (xx,))
        (slope,) = torch.autograd.grad(out.sum(), xx, create_graph=True)
        return torch.relu(slope).pow(2).sum() + slope.pow(3).sum()

    flat = model.flat.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(penalty, (flat,))


def test_device_resolution():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            resolve_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_forward_matches_cpu():
    cpu = EnsembleMLP(8, *PDF, seed=2, dtype=torch.float64)
    gpu = EnsembleMLP(8, *PDF, seed=2, dtype=torch.float64, device="cuda")
    x = torch.rand(100, 2, dtype=torch.float64)
    torch.testing.assert_close(gpu(x.cuda()).cpu(), cpu(x), rtol=1e-10, atol=1e-12)


HAND = ([2, 5, 4, 3, 2], ["tanh", "sigmoid", "tanh", "linear"])


class _HandWritten(torch.autograd.Function):
    """layers_forward / layers_backward as an autograd node, for gradcheck."""

    @staticmethod
    def forward(ctx, flat, model, h):
        with torch.no_grad():
            model.flat.copy_(flat)
        out, ctx.tape = model.layers_forward(h)
        ctx.model = model
        return out.clone()

    @staticmethod
    def backward(ctx, grad):
        return ctx.model.layers_backward(ctx.tape, grad.contiguous()), None, None


def test_hand_written_layer_backward_passes_gradcheck():
    """layers_backward against finite differences of layers_forward, float64, a tiny ensemble."""
    model = EnsembleMLP(3, *HAND, seed=5, dtype=torch.float64, init="uniform")
    h = torch.rand(3, 2, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    flat = model.flat.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda f: _HandWritten.apply(f, model, h), (flat,))


@pytest.mark.parametrize(("net", "n_points"), [(HAND, 9), (EELS, 9), (WIDE, 4100)])
def test_layers_forward_and_backward_give_autograds_gradient(net, n_points):
    """layers_forward / layers_backward (no graph at all, replica chunks included: WIDE at 4100
    points runs one replica per pass) give the output and the gradient of autograd's graph."""
    sizes, acts = net
    model = EnsembleMLP(3, sizes, acts, seed=2, dtype=torch.float64, init="uniform")
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(3, n_points, sizes[0], generator=gen, dtype=torch.float64)
    upstream = torch.randn(3, n_points, sizes[-1], generator=gen, dtype=torch.float64)
    reference = model(x)
    (expected,) = torch.autograd.grad((reference * upstream).sum(), model.flat)
    out, tape = model.layers_forward(x.transpose(1, 2).contiguous())
    assert out.grad_fn is None and len(tape) == (3 if net is WIDE else 1)
    torch.testing.assert_close(out.transpose(1, 2), reference.detach(), rtol=1e-13, atol=1e-14)
    grad = model.layers_backward(tape, upstream.transpose(1, 2).contiguous())
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-14)


def test_layers_forward_errors():
    with pytest.raises(ValueError, match="derivative from their output.*softplus"):
        EnsembleMLP(2, [2, 3, 1], ["softplus", "linear"]).layers_forward(torch.zeros(2, 2, 5))
    with pytest.raises(ValueError, match=r"h must be \(2, 2, B\), got \(2, 5, 2\)"):
        EnsembleMLP(2, [2, 3, 1], ["tanh", "linear"]).layers_forward(torch.zeros(2, 5, 2))
