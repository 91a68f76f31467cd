"""Batched replica training: chi2 loss, NNPDF-style per-replica stopping, selection, checkpoints.

One loop trains all replicas of an `EnsembleMLP` at once: the summed per-replica loss gives each
replica its own gradient, and an element-wise optimiser with an (R,) `active` mask moves only the
replicas still training. Per-replica decisions (best weights, freezing, re-initialising dead
replicas) need the losses on the host, so they happen only at check epochs, every
`validation_every` epochs: between checks the loop never synchronises with the device (no .item(),
no .cpu()), which matters on GPU where a sync per step would idle the device.

The loop itself draws no random numbers: initial and re-initialised weights are keyed by
(model seed, replica id, generation), pseudo-data and masks by (data seed, replica id). Training is
therefore deterministic on CPU, and the checkpoint's random state is the per-replica generation
counter stored with the weights.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields

import numpy as np
import torch

from .blas import one_blas_thread
from .mlp import EnsembleMLP, resolve_device
from .optim import OptimiserConfig, clip_per_replica, make_optimiser
from .replicas import checked_cholesky

Tensor = torch.Tensor
LossFn = Callable[[EnsembleMLP, bool], tuple[Tensor, Tensor | None]]


def chi2(residuals: Tensor, cholesky: Tensor) -> Tensor:
    """Per-replica r^T C^-1 r / n from the Cholesky factor L of C (C = L L^T).

    `cholesky` is (n, n) shared by all replicas, (R, n, n) per replica, or (n,) standard
    deviations of a diagonal C. Solving L z = r and summing z^2 never forms C^-1, which would be
    slower and lose precision on ill-conditioned experimental covariances.
    """
    if cholesky.dim() == 1:
        z = residuals / cholesky
    elif cholesky.dim() == 2:
        z = torch.linalg.solve_triangular(cholesky, residuals.T, upper=False).T
    else:
        z = torch.linalg.solve_triangular(cholesky, residuals.unsqueeze(-1), upper=False)
        z = z.squeeze(-1)
    return z.pow(2).mean(-1)


class NetworkOutput:
    """A `Chi2Loss` prediction that is the network itself: the outputs at fixed inputs x,
    (B, in) shared by all replicas or (R, B, in) per replica, combined by `weights` (n_out,)
    (None: output 0), predictions (R, B).

    Chi2Loss differentiates through it by hand (`Chi2Loss.value_and_grad`): the layers'
    forward and backward of EnsembleMLP.layers_forward / layers_backward and the chi2's
    gradient in closed form, no autograd graph. Any other predict (an FK convolution, an
    output transform) goes through autograd as before.
    """

    def __init__(self, x: Tensor, weights: np.ndarray | None = None):
        if x.dim() not in (2, 3):
            raise ValueError(f"x must be (B, in) or (R, B, in), got shape {tuple(x.shape)}")
        self.x = x
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=x.dtype, device=x.device)
        self._h: Tensor | None = None

    def __call__(self, model: EnsembleMLP) -> Tensor:
        out = model(self.x)
        return out[..., 0] if self.weights is None else out @ self.weights

    def feature_major(self, model: EnsembleMLP) -> Tensor:
        """x as the layers take it, (R, in, B) (an expanded view when shared), made once."""
        if self._h is None or self._h.shape[0] != model.n_replicas or self._h.dtype != model.dtype:
            h = self.x.transpose(-1, -2).to(model.dtype).contiguous()
            self._h = h.expand(model.n_replicas, *h.shape) if h.dim() == 2 else h
        return self._h

    def output_gradient(self, grad: Tensor, n_out: int) -> Tensor:
        """d loss / d output (R, n_out, B) from d loss / d prediction (R, B)."""
        if self.weights is None:
            if n_out == 1:
                return grad.unsqueeze(1)
            out = grad.new_zeros(grad.shape[0], n_out, grad.shape[1])
            out[:, 0] = grad
            return out
        return self.weights.view(1, -1, 1) * grad.unsqueeze(1)


class Chi2Loss:
    """A loss_fn: chi2/n of each replica's predictions against its own pseudo-data.

    predict(model) -> (R, n) predictions at all points (model(x)[..., 0], or an FK convolution of
    the network output). train_mask (R, n) picks each replica's training points; the others
    validate (with no validation points the training chi2 stands in). Each replica's chi2 uses the
    covariance restricted to its own points, so full covariances give per-replica Cholesky factors
    (R, m, m): memory grows as R m^2. A diagonal covariance is detected and kept as (R, m)
    standard deviations. A `NetworkOutput` predict gets its gradient by hand (`value_and_grad`).
    """

    def __init__(
        self,
        predict: Callable[[EnsembleMLP], Tensor],
        data: np.ndarray,
        covariance: np.ndarray,
        train_mask: np.ndarray,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        data = np.asarray(data, float)
        cov = np.asarray(covariance, float)
        mask = np.asarray(train_mask, bool)
        if data.ndim != 2:
            raise ValueError(f"data must be (R, n) pseudo-data replicas, got shape {data.shape}")
        r, n = data.shape
        if cov.shape != (n, n):
            raise ValueError(f"covariance must have shape ({n}, {n}), got {cov.shape}")
        if mask.shape != (r, n):
            raise ValueError(f"train_mask must have shape ({r}, {n}), got {mask.shape}")
        counts = mask.sum(1)
        if counts.min() != counts.max() or counts[0] == 0:
            raise ValueError(
                "every replica needs the same, non-zero number of training points "
                f"(got {counts.min()}..{counts.max()}); training_masks() gives that"
            )
        diagonal = not np.any(cov - np.diag(np.diag(cov)))
        if diagonal and not np.all(np.diag(cov) > 0):
            raise ValueError("covariance has non-positive variances on its diagonal")
        if not diagonal:
            checked_cholesky(cov)
        device = resolve_device(device)
        order = np.argsort(~mask, axis=1, kind="stable")
        self.predict = predict
        self._shape = (r, n)
        self._sets = []
        for idx in (order[:, : counts[0]], order[:, counts[0] :]):
            if idx.shape[1] == 0:
                self._sets.append(None)
                continue
            if diagonal:
                factor = np.sqrt(np.diag(cov))[idx]
            else:
                factor = np.linalg.cholesky(cov[idx[:, :, None], idx[:, None, :]])
            self._sets.append(
                tuple(
                    torch.as_tensor(a, dtype=t, device=device)
                    for a, t in (
                        (idx, torch.int64),
                        (np.take_along_axis(data, idx, 1), dtype),
                        (factor, dtype),
                    )
                )
            )

    @staticmethod
    def _chi2(pred: Tensor, subset) -> Tensor:
        idx, target, factor = subset
        residuals = target - pred.gather(1, idx)
        if factor.dim() == 2:
            return (residuals / factor).pow(2).mean(-1)
        return chi2(residuals, factor)

    @staticmethod
    def _chi2_gradient(pred: Tensor, subset, with_value: bool = True) -> tuple[Tensor | None, Tensor]:
        """(chi2 (R,) or None, d chi2 / d pred (R, n)): with z = L^-1 r, r = target - pred at the
        subset's points, chi2 = |z|^2 / m and d chi2 / d r = 2 L^-T z / m (a diagonal L: 2 z / (m
        sigma)), scattered back to the points (each replica's points are distinct)."""
        idx, target, factor = subset
        m = idx.shape[1]
        residuals = target - pred.gather(1, idx)
        if factor.dim() == 2:
            z = residuals / factor
            d_res = z / factor
        else:
            z = torch.linalg.solve_triangular(factor, residuals.unsqueeze(-1), upper=False)
            d_res = torch.linalg.solve_triangular(factor.transpose(1, 2), z, upper=True).squeeze(-1)
            z = z.squeeze(-1)
        value = z.pow(2).mean(-1) if with_value else None
        return value, pred.new_zeros(pred.shape).scatter_(1, idx, d_res.mul_(-2.0 / m))

    def __call__(self, model: EnsembleMLP, validate: bool) -> tuple[Tensor, Tensor | None]:
        pred = self.predict(model)
        if pred.shape != self._shape:
            raise ValueError(f"predict returned shape {tuple(pred.shape)}, expected {self._shape}")
        train = self._chi2(pred, self._sets[0])
        if not validate:
            return train, None
        return train, self._validation(pred.detach(), train)

    @torch.no_grad()
    def _validation(self, pred: Tensor, train: Tensor) -> Tensor:
        return train.detach() if self._sets[1] is None else self._chi2(pred, self._sets[1])

    @torch.no_grad()
    def value_and_grad(
        self, model: EnsembleMLP, validate: bool
    ) -> tuple[Tensor, Tensor | None, list[Tensor]] | None:
        """__call__'s losses (train None where not `validate`) and d train.sum() /
        d model.parameters() by hand, for a `NetworkOutput` predict on plain layers
        (train_ensemble uses it in place of autograd); None otherwise (autograd then).

        Why: besides autograd's per-node cost, the hand-written layer backward runs each
        weight gradient in MKL's faster orientation (EnsembleMLP.layers_backward). The EELS ZLP
        net (100 replicas, 1000 points, 60 steps, one thread) trained in 0.63 CPU-s this way
        against 0.81 through autograd (best of 5-6, separate runs at load ~15 on 2 cores);
        tests/benchmarks/bench_replica_training.py compares it with a loop.
        """
        p = self.predict
        plain = not (model.trainable_params or model.input_transform or model.output_transform)
        if not (isinstance(p, NetworkOutput) and plain and model.positivity is None):
            return None
        if not model.supports_layers_backward:
            return None
        out, tape = model.layers_forward(p.feature_major(model))
        pred = out[:, 0] if p.weights is None else torch.einsum("rob,o->rb", out, p.weights)
        if pred.shape != self._shape:
            raise ValueError(f"predict returned shape {tuple(pred.shape)}, expected {self._shape}")
        train, d_pred = self._chi2_gradient(pred, self._sets[0], with_value=validate)
        grads = [model.layers_backward(tape, p.output_gradient(d_pred, out.shape[1]))]
        return train, (self._validation(pred, train) if validate else None), grads


@dataclass(frozen=True)
class StoppingConfig:
    """Per-replica stopping, stagnation handling and post-fit selection.

    threshold: a replica counts (tracks its best epoch) only once its validation loss is below
    this (NNPDF's threshold_chi2; 10 is n3fit's default). patience: epochs without improvement
    before freezing (None: 10% of n_epochs); it is checked at check epochs, so it is effectively
    rounded up to a multiple of validation_every. stagnation_epochs: a replica whose training loss
    changes by less than stagnation_tol (relative) for that many epochs, or becomes non-finite, is
    dead: re-initialised if it never reached the threshold (at most max_reinits times, then
    frozen and dropped), frozen with its best weights if it did. None disables the check.
    outlier_sigma: drop replicas whose best training loss exceeds median + this many standard
    deviations of the losses of the replicas that reached the threshold.
    """

    threshold: float = 10.0
    patience: int | None = None
    stagnation_epochs: int | None = 200
    stagnation_tol: float = 1e-6
    max_reinits: int = 3
    outlier_sigma: float = 4.0

    def __post_init__(self):
        for name in ("patience", "stagnation_epochs"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive or None, got {value}")
        if self.stagnation_tol < 0 or self.max_reinits < 0 or self.outlier_sigma <= 0:
            raise ValueError("stagnation_tol and max_reinits must be >= 0, outlier_sigma > 0")


@dataclass(frozen=True)
class Progress:
    """What a progress callback sees at each check epoch (host copies)."""

    epoch: int
    n_epochs: int
    train: np.ndarray
    val: np.ndarray
    frozen: np.ndarray
    n_reinit: int


@dataclass
class History:
    """Losses at every check epoch (C,) x replica (R), and every re-initialisation event."""

    epoch: np.ndarray
    train: np.ndarray
    val: np.ndarray
    reinit_epoch: np.ndarray
    reinit_replica: np.ndarray


@dataclass
class TrainResult:
    """Best weights (as `EnsembleMLP.to_arrays`), per-replica outcomes and the loss history.

    Replicas that reached the threshold carry their best-validation weights; the others their
    last weights (they are not kept). stopping_epoch is when a replica froze, n_epochs otherwise.
    """

    weights: dict[str, np.ndarray]
    architecture: dict
    best_epoch: np.ndarray
    stopping_epoch: np.ndarray
    best_train: np.ndarray
    best_val: np.ndarray
    kept: np.ndarray
    reasons: list[str]
    n_reinit: np.ndarray
    history: History
    epochs_run: int

    def summary(self) -> str:
        """How many replicas were kept, and how many were dropped for which reason."""
        dropped = Counter(r.split(" (")[0] for r, k in zip(self.reasons, self.kept) if not k)
        text = f"kept {int(self.kept.sum())} of {self.kept.size} replicas"
        return text + "".join(f"; {n} dropped: {why}" for why, n in sorted(dropped.items()))


def select_replicas(
    best_train: np.ndarray, min_val: np.ndarray, threshold: float, n_sigma: float = 4.0
) -> tuple[np.ndarray, list[str]]:
    """Post-fit selection: drop replicas that never reached the threshold, then chi2 outliers.

    Outliers are judged among the replicas that reached the threshold: best training loss above
    median + n_sigma * std (or non-finite). With >= 17 replicas a single outlier cannot hide by
    inflating the std it is judged by (it adds about x / sqrt(R) to it).
    """
    reached = min_val < threshold
    chi = best_train[reached]
    cut = np.median(chi) + n_sigma * np.std(chi) if chi.size else math.inf
    kept = np.zeros(best_train.size, bool)
    reasons = []
    for k in range(best_train.size):
        if not reached[k]:
            reasons.append(
                f"never reached the validation threshold (lowest {min_val[k]:.4g} >= {threshold:g})"
            )
        elif not best_train[k] <= cut:
            reasons.append(
                f"chi2 outlier (training {best_train[k]:.4g} > median + {n_sigma:g} sigma = {cut:.4g})"
            )
        else:
            kept[k] = True
            reasons.append("kept")
    return kept, reasons


@dataclass
class _Tracker:
    """Per-replica stopping state on the host (updated only at check epochs)."""

    best_val: np.ndarray
    best_train: np.ndarray
    min_val: np.ndarray
    best_epoch: np.ndarray
    counting: np.ndarray
    frozen: np.ndarray
    stop_epoch: np.ndarray
    n_reinit: np.ndarray
    stag_ref: np.ndarray
    stag_epoch: np.ndarray

    @classmethod
    def fresh(cls, r: int) -> _Tracker:
        inf = np.full(r, np.inf)
        return cls(
            best_val=inf.copy(),
            best_train=inf.copy(),
            min_val=inf.copy(),
            best_epoch=np.full(r, -1),
            counting=np.zeros(r, bool),
            frozen=np.zeros(r, bool),
            stop_epoch=np.full(r, -1),
            n_reinit=np.zeros(r, np.int64),
            stag_ref=np.full(r, np.nan),
            stag_epoch=np.zeros(r, np.int64),
        )


class _Fit:
    """The mutable state of one training run, with the check-epoch logic and (re)storing."""

    def __init__(self, model, n_epochs, optimiser, stopping):
        self.model = model
        self.n_epochs = n_epochs
        self.stopping = stopping
        self.patience = stopping.patience or max(1, n_epochs // 10)
        self.params = list(model.parameters())
        self.opt = make_optimiser(self.params, optimiser)
        self.clip = optimiser.clip_norm
        self.best = [p.detach().clone() for p in self.params]
        self.track = _Tracker.fresh(model.n_replicas)
        self.hist: dict[str, list] = {k: [] for k in ("epoch", "train", "val", "rep", "rep_epoch")}

    def _where(self, mask: np.ndarray, sources, targets) -> None:
        m = torch.as_tensor(mask, device=self.model.device)
        with torch.no_grad():
            for s, t in zip(sources, targets):
                t.copy_(torch.where(m.view(-1, *[1] * (t.dim() - 1)), s, t))

    def check(self, epoch: int, train: Tensor, val: Tensor | None, final: bool) -> np.ndarray:
        """Stopping decisions at a check epoch; returns the replicas to re-initialise."""
        if val is None:
            raise ValueError("loss_fn returned no validation loss at a check epoch")
        tr = train.detach().to(torch.float64).cpu().numpy()
        va = val.detach().to(torch.float64).cpu().numpy()
        t, s = self.track, self.stopping
        act = ~t.frozen
        self.hist["epoch"].append(epoch)
        self.hist["train"].append(tr)
        self.hist["val"].append(va)
        t.min_val[act] = np.fmin(t.min_val[act], va[act])
        t.counting |= act & (va < s.threshold)
        improved = act & t.counting & (va < t.best_val)
        t.best_val[improved] = va[improved]
        t.best_train[improved] = tr[improved]
        t.best_epoch[improved] = epoch
        if improved.any():
            self._where(improved, self.params, self.best)
        reinit = np.zeros_like(act)
        if final:
            return reinit
        freeze = act & t.counting & (epoch - t.best_epoch >= self.patience)
        if s.stagnation_epochs is not None:
            changed = act & ~(np.abs(tr - t.stag_ref) <= s.stagnation_tol * np.abs(t.stag_ref))
            t.stag_ref[changed] = tr[changed]
            t.stag_epoch[changed] = epoch
            stuck = act & (~np.isfinite(tr) | (epoch - t.stag_epoch >= s.stagnation_epochs))
            reinit = stuck & ~t.counting & (t.n_reinit < s.max_reinits)
            freeze |= stuck & ~reinit
        t.frozen |= freeze
        t.stop_epoch[freeze] = epoch
        if reinit.any():
            self.model.reinitialise(reinit)
            self.opt.reset(reinit)
            t.n_reinit[reinit] += 1
            t.stag_ref[reinit] = np.nan
            t.stag_epoch[reinit] = epoch
            self.hist["rep"].extend(np.flatnonzero(reinit).tolist())
            self.hist["rep_epoch"].extend([epoch] * int(reinit.sum()))
        return reinit

    def state(self, epoch: int) -> dict[str, np.ndarray]:
        """Everything needed to continue exactly, as a flat dict of numpy arrays."""
        out = {"epoch": np.array(epoch)}
        out.update({f"model.{k}": v for k, v in self.model.to_arrays().items()})
        out.update({f"optimiser.{k}": v for k, v in self.opt.state_arrays().items()})
        out.update({f"best.{i}": b.cpu().numpy().copy() for i, b in enumerate(self.best)})
        for f in fields(_Tracker):
            out[f"tracker.{f.name}"] = getattr(self.track, f.name).copy()
        out.update({f"history.{k}": v for k, v in self._history().__dict__.items()})
        return out

    def restore(self, state: Mapping[str, np.ndarray]) -> int:
        def sub(prefix):
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}

        if "epoch" not in state:
            raise ValueError("checkpoint state has no 'epoch': not a train_ensemble state")
        try:
            self.model.load_arrays(sub("model."))
            self.opt.load_state_arrays(sub("optimiser."))
            for i, b in enumerate(self.best):
                b.copy_(torch.as_tensor(state[f"best.{i}"]))
            track = {f.name: state[f"tracker.{f.name}"].copy() for f in fields(_Tracker)}
            h = sub("history.")
            self.hist = {
                "epoch": h["epoch"].tolist(),
                "train": list(h["train"]),
                "val": list(h["val"]),
                "rep": h["reinit_replica"].tolist(),
                "rep_epoch": h["reinit_epoch"].tolist(),
            }
        except KeyError as exc:
            raise ValueError(f"checkpoint state lacks {exc}: saved from another model?") from None
        self.track = _Tracker(**track)
        return int(state["epoch"])

    def _history(self) -> History:
        r = self.model.n_replicas
        return History(
            epoch=np.asarray(self.hist["epoch"], np.int64),
            train=np.asarray(self.hist["train"], float).reshape(-1, r),
            val=np.asarray(self.hist["val"], float).reshape(-1, r),
            reinit_epoch=np.asarray(self.hist["rep_epoch"], np.int64),
            reinit_replica=np.asarray(self.hist["rep"], np.int64),
        )

    def result(self, epochs_run: int) -> TrainResult:
        t = self.track
        self._where(t.counting, self.best, self.params)
        stop = np.where(t.frozen, t.stop_epoch, self.n_epochs)
        kept, reasons = select_replicas(
            t.best_train, t.min_val, self.stopping.threshold, self.stopping.outlier_sigma
        )
        return TrainResult(
            weights=self.model.to_arrays(),
            architecture=self.model.architecture(),
            best_epoch=t.best_epoch.copy(),
            stopping_epoch=stop,
            best_train=t.best_train.copy(),
            best_val=t.best_val.copy(),
            kept=kept,
            reasons=reasons,
            n_reinit=t.n_reinit.copy(),
            history=self._history(),
            epochs_run=epochs_run,
        )


def one_thread() -> None:
    """One compute thread per worker: torch's intra- and inter-op pools and numpy's BLAS.

    torch.set_num_threads(1) alone leaves numpy's OpenBLAS pool at one thread per core, whose
    threads spin after every call: measured on the batched EELS ZLP training (100 replicas, 60
    steps, 2 cores, load ~12), 1.6-1.9 CPU-s with torch alone at one thread against 0.81-0.88
    with the BLAS limited as well (the Python-loop side: 7.7 CPU-s either way). The BLAS limit
    is process-wide and set once; torch's inter-op pool can only be sized before its first use.
    """
    torch.set_num_threads(1)
    _limit_pools()


@functools.cache
def _limit_pools() -> None:
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already started (set by the user, or used): leave it
        pass
    one_blas_thread()


def train_ensemble(
    model: EnsembleMLP,
    loss_fn: LossFn,
    n_epochs: int,
    *,
    optimiser: OptimiserConfig | None = None,
    stopping: StoppingConfig | None = None,
    validation_every: int = 10,
    progress: Callable[[Progress], None] | None = None,
    checkpoint_every: int | None = None,
    on_checkpoint: Callable[[dict[str, np.ndarray]], None] | None = None,
    resume_from: Mapping[str, np.ndarray] | None = None,
) -> TrainResult:
    """Train every replica of `model` on `loss_fn` until all are frozen or n_epochs steps.

    loss_fn(model, validate) -> (train (R,), val (R,) or None): per-replica losses; val is
    needed only when validate is True (check epochs). A loss_fn with a method
    `value_and_grad(model, validate)` -> (train, val, gradients of train.sum() with respect to
    model.parameters()) computes its gradients itself, by hand, and the loop skips autograd
    (at small minibatches autograd's per-node cost is a sizeable share of a step); it returns
    None where it cannot for this model, and autograd does it from then on. Its train may be
    None where validate is False: the loop reads the losses at check epochs only. A loss whose draws
    depend on the step (minibatches, a growing penalty) has an `epoch` attribute: it is set to
    the epoch before every call, so a resumed run draws exactly what an uninterrupted one would.
    Epoch e evaluates the weights after e steps; checks run at e % validation_every == 0 and
    once more after the last step. `on_checkpoint` gets `state` every `checkpoint_every` steps;
    `resume_from=state` continues from it and gives the same result as an uninterrupted run. On
    return the model holds each kept replica's best weights.
    """
    if n_epochs < 0 or validation_every <= 0:
        raise ValueError("n_epochs must be >= 0 and validation_every > 0")
    one_thread()
    if checkpoint_every is not None and (checkpoint_every <= 0 or on_checkpoint is None):
        raise ValueError("checkpoint_every needs a positive value and an on_checkpoint callback")
    optimiser = optimiser or OptimiserConfig()
    fit = _Fit(model, n_epochs, optimiser, stopping or StoppingConfig())
    start = fit.restore(resume_from) if resume_from is not None else 0
    active = torch.as_tensor(~fit.track.frozen, device=model.device)
    all_active = not fit.track.frozen.any()  # the host's copy: no sync to know it
    epoch_keyed = hasattr(loss_fn, "epoch")
    by_hand = getattr(loss_fn, "value_and_grad", None)
    for epoch in range(start, n_epochs):
        check = epoch % validation_every == 0
        if epoch_keyed:
            loss_fn.epoch = epoch
        result = by_hand(model, check) if by_hand else None
        if result is not None:
            train, val, grads = result
        else:
            by_hand = None  # it cannot for this model: autograd from now on
            train, val = loss_fn(model, check)
            # gradients first: a check may re-initialise weights in place, which autograd forbids
            grads = torch.autograd.grad(train.sum(), fit.params, allow_unused=True, materialize_grads=True)
        step_mask, step_all = active, all_active
        if check:
            reinit = fit.check(epoch, train, val, final=False)
            if progress:
                progress(_progress(fit, epoch))
            if fit.track.frozen.all():
                return fit.result(epoch)
            active = torch.as_tensor(~fit.track.frozen, device=model.device)
            all_active = not fit.track.frozen.any()
            step_mask = active & torch.as_tensor(~reinit, device=model.device)
            step_all = all_active and not reinit.any()
        if fit.clip is not None:
            grads = clip_per_replica(grads, fit.clip)
        fit.opt.step(grads, step_mask, epoch / max(1, n_epochs - 1), all_active=step_all)
        if checkpoint_every and (epoch + 1) % checkpoint_every == 0:
            on_checkpoint(fit.state(epoch + 1))
    if epoch_keyed:
        loss_fn.epoch = n_epochs
    with torch.no_grad():
        train, val = loss_fn(model, True)
    fit.check(n_epochs, train, val, final=True)
    if progress:
        progress(_progress(fit, n_epochs))
    return fit.result(n_epochs)


def train_with_config(
    model: EnsembleMLP,
    loss_fn: LossFn,
    config,
    *,
    progress: Callable[[Progress], None] | None = None,
    on_checkpoint: Callable[[dict[str, np.ndarray]], None] | None = None,
    resume_from: Mapping[str, np.ndarray] | None = None,
) -> TrainResult:
    """train_ensemble with the epochs, optimiser, stopping and cadences of an op's training config
    (any object with epochs, optimiser, stopping, validation_every and checkpoint_every)."""
    return train_ensemble(
        model,
        loss_fn,
        config.epochs,
        optimiser=config.optimiser,
        stopping=config.stopping,
        validation_every=config.validation_every,
        progress=progress,
        checkpoint_every=config.checkpoint_every,
        on_checkpoint=on_checkpoint,
        resume_from=resume_from,
    )


def _progress(fit: _Fit, epoch: int) -> Progress:
    return Progress(
        epoch=epoch,
        n_epochs=fit.n_epochs,
        train=fit.hist["train"][-1],
        val=fit.hist["val"][-1],
        frozen=fit.track.frozen.copy(),
        n_reinit=int(fit.track.n_reinit.sum()),
    )
