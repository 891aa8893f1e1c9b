"""The cheap-robustness baselines a reviewer compares SAT with, registered after the paper's
nine in the one variant registry (satpipe.train.variants).

Each is defined in its class docstring with its paper:

| variant     | the batch trains on / loss                                    | passes F + B     |
|-------------|---------------------------------------------------------------|------------------|
| fgsm-rs     | FGSM-RS(x), CE (Wong et al. 2020)                             | 2 + 2            |
| fgsm-rs-sat | coin ? x_sat : FGSM-RS(x), CE (no paper: measured here)       | 1.5 + 1.5        |
| free        | x + delta, CE, batch replayed m times (Shafahi et al. 2019)   | m + m per batch  |
| rrr         | CE + lambda ||(1 - A) grad_x sum log p||^2 (Ross et al. 2017) | 1 + 2 (double)   |
| igr         | CE + lambda ||grad_x CE||^2 (Ross & Doshi-Velez 2018)         | 1 + 2 (double)   |
| sgt         | CE + lambda KL(p(x) || p(masked x)) (Ismail et al. 2021)      | 3 + 3            |
| n-fgsm      | FGSM of 1 eps from x + U(-2 eps, 2 eps), CE (de Jorge 2022)   | 2 + 2            |
| gradalign   | FGSM(x), CE + lambda (1 - cos(grad at x, at x + eta)) (2020)  | 3 + 4 (double)   |
| energy      | CE + lambda sum 1 - EPG(input x gradient, A) (Rao 2023)       | 1 + 2 (double)   |

Every attack here runs in eval mode, as the paper's variants' attacks do (satpipe.train.variants).
That holds for FGSM-RS and SGT's saliency too (Wong et al.'s and Ismail et al.'s code attack in
train mode / take saliency in eval mode): the rows differ in their method, not in BatchNorm
handling. Free has no separate attack pass: its one forward/backward pass per replay trains the
weights and steps delta at once (train mode).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from satpipe.core.errors import SatpipeError
from satpipe.core.modules import model_state
from satpipe.train.eval.attacks import fgsm_rs, input_grad, nfgsm
from satpipe.train.losses import (
    energy_loss,
    gradalign_penalty,
    igr_loss,
    input_x_gradient,
    rrr_loss,
    sgt_loss,
)
from satpipe.train.perturb import saliency_mask, sat_perturb_counted
from satpipe.train.variant_base import (
    WEAK_SALIENCY,
    Cost,
    StepOutput,
    TrainingVariant,
    VariantConfig,
    coin,
    sat_alpha,
    step_output,
)

__all__ = [
    "BASELINES",
    "EnergyGuided",
    "FastAT",
    "Free",
    "GradAlign",
    "GradientRegularised",
    "NoiseFGSM",
    "RightReasons",
    "SaliencyGuided",
]


@dataclass(frozen=True)
class FastAT(TrainingVariant):
    """FGSM-RS(x), CE: FGSM from a uniform random start, step 1.25 eps (Wong, Rice, Kolter,
    "Fast is better than free", ICLR 2020); with mix="sat", one coin per batch sends it to
    x_sat instead, as PGD-SAT does with PGD (fgsm-rs-sat: no paper has it, measured here)."""

    name: str
    mix: str  # "none" or "sat"
    description: str
    title: str
    single_step = True

    @property
    def needs_saliency(self) -> bool:
        return self.mix == "sat"

    @property
    def kind(self) -> str:
        return "sat" if self.mix == "sat" else "fast-at"

    def _cost(self, cfg: VariantConfig) -> Cost:
        """The attack's forward and backward pass (with probability q), then the training
        pass: 1 + q each; q = 1 for fgsm-rs, 1 - p_mix for fgsm-rs-sat."""
        q = 1.0 if self.mix == "none" else 1.0 - cfg.p_mix
        return Cost(1.0 + q, 1.0 + q)

    def step(self, model, x, s, y, *, epoch, cfg, generator=None, attack_model=None):
        self.require_saliency(s)
        attack_model = model if attack_model is None else attack_model
        cheap = self.mix == "sat" and coin(cfg.p_mix, generator)
        counts = None
        if cheap:
            x_in, counts = sat_perturb_counted(x, s, cfg.eps, sat_alpha(epoch, cfg), generator)
        else:
            with model_state(attack_model, training=False):
                x_in = fgsm_rs(
                    attack_model, x, y, cfg.eps, cfg.fgsm_step_ratio * cfg.eps, generator
                )
        logits = model(x_in)
        return step_output(F.cross_entropy(logits.float(), y), logits, not cheap, counts, x)


@dataclass(frozen=True)
class Free(TrainingVariant):
    """x + delta, CE, each minibatch replayed m times; one backward pass per replay updates
    the weights and steps delta += eps sign(grad_delta), clipped to the eps-ball, and delta
    is carried to the next replay and batch (Shafahi et al., "Adversarial training for free!",
    NeurIPS 2019). A run of E epochs makes ceil(E / m) passes over the data, as the authors'
    code rounds (so E replayed epochs cost about E plain ones).

    delta starts at zero at every epoch (the authors' code starts it once, at zero): the
    state then never outlives an epoch, and a resumed run is still bit-for-bit the same.
    """

    name: str
    description: str
    title: str
    single_step = True
    kind = "fast-at"

    def _cost(self, cfg: VariantConfig) -> Cost:
        """Per batch of data: m replays of one forward and one backward pass."""
        m = float(cfg.free_replays)
        return Cost(m, m)

    def data_passes(self, epochs: int, cfg: VariantConfig) -> int:
        return math.ceil(epochs / cfg.free_replays)

    def passes_note(self, epochs: int, cfg: VariantConfig) -> str | None:
        m, passes = cfg.free_replays, self.data_passes(epochs, cfg)
        rounded = "" if passes * m == epochs else f", rounded up from {epochs / m:g}"
        return (
            f"free: --epochs {epochs} with m = {m} replays makes {passes} passes over the data "
            f"({passes * m} epochs' worth of steps{rounded}, as the authors' code rounds)"
        )

    def begin_epoch(self) -> dict[str, Any]:
        return {"delta": None}

    def step(self, model, x, s, y, *, epoch, cfg, generator=None, attack_model=None, delta=None):
        """One replay: CE on clamp(x + delta, 0, 1); delta (B, C, H, W) a leaf that requires
        grad (zeros when None), so the caller's backward pass also yields grad_delta."""
        if delta is None:
            delta = torch.zeros_like(x, requires_grad=True)
        logits = model((x + delta).clamp(0.0, 1.0))
        return StepOutput(F.cross_entropy(logits.float(), y), logits, True)

    def train_batch(
        self, model, optimizer, x, s, y, *, epoch, cfg, generator=None, attack_model=None,
        autocast=None, state=None,
    ):  # fmt: skip
        state = state if state is not None else self.begin_epoch()
        delta = _carried(state, x)
        losses, first_logits = [], None
        for _ in range(cfg.free_replays):
            delta.requires_grad_(True)
            with autocast if autocast is not None else contextlib.nullcontext():
                out = self.step(model, x, s, y, epoch=epoch, cfg=cfg, delta=delta)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            # The same backward pass gave the weights' gradient and delta's: step both.
            g = delta.grad if delta.grad is not None else torch.zeros_like(delta)
            delta = (delta.detach() + cfg.eps * g.sign()).clamp_(-cfg.eps, cfg.eps)
            optimizer.step()
            losses.append(out.loss.detach())
            if first_logits is None:
                first_logits = out.logits.detach()
        state["delta"][: len(x)] = delta
        return StepOutput(torch.stack(losses).mean(), first_logits, True)


def _carried(state: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
    """Free's perturbation for batch x: the first B rows of the one carried over (zeros where
    none was), as the authors' code slices its global perturbation."""
    buf = state.get("delta")
    if buf is None or buf.shape[1:] != x.shape[1:] or buf.device != x.device:
        buf = state["delta"] = torch.zeros_like(x)
    elif len(buf) < len(x):
        buf = state["delta"] = torch.cat([buf, torch.zeros_like(x[len(buf) :])])
    return buf[: len(x)].clone()


@dataclass(frozen=True)
class RightReasons(TrainingVariant):
    """CE + lambda ||(1 - A) grad_x sum_k log p_k||^2 with A = 1 inside the object, from a
    weak-saliency store (stored map > 0): Right for the Right Reasons (Ross, Hughes,
    Doshi-Velez, IJCAI 2017)."""

    name: str
    description: str
    title: str
    needs_saliency = True
    saliency_kind = "a weak-saliency store, method mask or bbox"
    kind = "explanation"

    def _cost(self, cfg: VariantConfig) -> Cost:
        """One forward pass, the input-gradient backward pass (its graph recorded), and the
        final backward pass through both: double backprop."""
        return Cost(1.0, 2.0, 1.0)

    def check_saliency(self, uri: str, method: str) -> None:
        if method not in WEAK_SALIENCY:
            raise SatpipeError(
                f"{uri}: variant '{self.name}' needs a weak-saliency store (method "
                f"{' or '.join(WEAK_SALIENCY)}: A = 1 inside the object); this one holds "
                f"'{method}' maps"
            )

    def step(self, model, x, s, y, *, epoch, cfg, generator=None, attack_model=None):
        self.require_saliency(s)
        loss, logits = rrr_loss(model, x, y, (s > 0).to(x.dtype), cfg.rrr_lambda)
        return StepOutput(loss, logits)


@dataclass(frozen=True)
class GradientRegularised(TrainingVariant):
    """CE + lambda ||grad_x CE||^2 per image, by double backprop: input gradient
    regularisation (Ross & Doshi-Velez, AAAI 2018)."""

    name: str
    description: str
    title: str
    kind = "explanation"

    def _cost(self, cfg: VariantConfig) -> Cost:
        """As RRR: one forward, a recorded input-gradient backward, the final backward."""
        return Cost(1.0, 2.0, 1.0)

    def step(self, model, x, s, y, *, epoch, cfg, generator=None, attack_model=None):
        loss, logits = igr_loss(model, x, y, cfg.igr_lambda)
        return StepOutput(loss, logits)


@dataclass(frozen=True)
class SaliencyGuided(TrainingVariant):
    """CE + lambda KL(p(x) || p(x_masked)), x_masked = x with the k% pixels of lowest
    saliency (the model's own input gradient of the true-class logit) set to random values:
    Saliency Guided Training (Ismail, Corrada Bravo, Feizi, NeurIPS 2021)."""

    name: str
    description: str
    title: str
    kind = "explanation"

    def _cost(self, cfg: VariantConfig) -> Cost:
        """Saliency: one forward and one backward pass (eval mode, input gradient only), then
        the training passes on x and on x_masked, forward and backward through each (as
        TRADES' two training passes are counted)."""
        return Cost(3.0, 3.0)

    def step(self, model, x, s, y, *, epoch, cfg, generator=None, attack_model=None):
        attack_model = model if attack_model is None else attack_model
        # The plain gradient of the true-class logit, as the authors' captum Saliency(abs=False)
        # computes it (tests/test_baselines.py checks it against captum).
        with model_state(attack_model, training=False), torch.enable_grad():
            x_req = x.detach().clone().requires_grad_(True)
            target = attack_model(x_req).float().gather(1, y.view(-1, 1)).sum()
            grad = input_grad(target, x_req)
        x_masked = saliency_mask(x, grad, cfg.sgt_fraction, generator)
        logits_clean, logits_masked = model(x), model(x_masked)
        return StepOutput(sgt_loss(logits_clean, logits_masked, y, cfg.sgt_lambda), logits_clean)


@dataclass(frozen=True)
class NoiseFGSM(TrainingVariant):
    """N-FGSM(x), CE: one FGSM step of 1 eps from x + eta, eta ~ U(-k eps, k eps) with k = 2,
    and no projection back to the eps-ball (only the clamp to [0, 1]): de Jorge, Bibi,
    Volpi, Sanyal, Torr, Rogez, Dokania, "Make Some Noise: Reliable and Efficient Single-Step
    Adversarial Training", NeurIPS 2022. Defaults: the paper's (--unif 2, --alpha 8 at
    --epsilon 8, --clip -1). The attack runs in eval mode, as every attack here does (their
    code attacks in train mode)."""

    name: str
    description: str
    title: str
    single_step = True
    kind = "fast-at"

    def _cost(self, cfg: VariantConfig) -> Cost:
        """The attack's forward and backward pass, then the training pass: 2 + 2."""
        return Cost(2.0, 2.0)

    def step(self, model, x, s, y, *, epoch, cfg, generator=None, attack_model=None):
        attack_model = model if attack_model is None else attack_model
        with model_state(attack_model, training=False):
            x_adv = nfgsm(attack_model, x, y, cfg.eps, cfg.nfgsm_noise, 1.0, generator)
        logits = model(x_adv)
        return StepOutput(F.cross_entropy(logits.float(), y), logits, True)


@dataclass(frozen=True)
class GradAlign(TrainingVariant):
    """FGSM(x), CE + lambda (1 - cos(grad_x CE(x), grad_x CE(x + eta))), eta ~ U(-eps, eps),
    the second gradient by double backprop: Andriushchenko & Flammarion, "Understanding and
    Improving Fast Adversarial Training", NeurIPS 2020.

    As their code runs it at eps 8/255 (`--attack fgsm --attack_init zero
    --grad_align_cos_lambda 0.2`): FGSM from x itself (no random start; their default
    --fgsm_alpha 1.25, clipped to the eps-ball, i.e. a step of eps), and the gradient at x is
    the FGSM step's own, used as a constant. lambda = 0.2 (their value for eps 8/255 on
    CIFAR-10; it grows with eps). Both gradients are taken in eval mode (the attack's mode
    here), so the cosine compares one function; the training pass runs in train mode.
    """

    name: str
    description: str
    title: str
    single_step = True
    kind = "fast-at"

    def _cost(self, cfg: VariantConfig) -> Cost:
        """FGSM: one forward, one backward; the training forward; the forward at x + eta and
        its input-gradient backward (graph recorded); the final backward runs through the
        training pass and through that recorded graph: 3 forward, 4 backward, 1 recorded
        (work 2.5x FGSM-RS: the paper reports GradAlign ~3x FGSM's time)."""
        return Cost(3.0, 4.0, 1.0)

    def step(self, model, x, s, y, *, epoch, cfg, generator=None, attack_model=None):
        attack_model = model if attack_model is None else attack_model
        x = x.detach()
        with model_state(attack_model, training=False), torch.enable_grad():
            x_req = x.clone().requires_grad_(True)
            grad_x = input_grad(F.cross_entropy(attack_model(x_req).float(), y), x_req)
        step = min(cfg.fgsm_step_ratio * cfg.eps, cfg.eps)  # FGSM from 0, clipped to the ball
        x_adv = (x + step * grad_x.sign()).clamp(0.0, 1.0)
        eta = (2.0 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
               - 1.0) * cfg.eps  # fmt: skip
        logits = model(x_adv)
        with model_state(attack_model, training=False):
            reg = gradalign_penalty(attack_model, x, y, grad_x, eta, cfg.gradalign_lambda)
        return StepOutput(F.cross_entropy(logits.float(), y) + reg, logits, True)


@dataclass(frozen=True)
class EnergyGuided(RightReasons):
    """CE + lambda sum_n (1 - sum_{in A} IxG+ / sum IxG+), IxG = input x gradient of the true
    class's logit summed over channels, A = the object (weak-saliency store > 0): the Energy
    loss of Rao, Böhle, Parchami-Araghi, Schiele, "Studying How to Efficiently and Effectively
    Guide Models with Explanations", ICCV 2023 (their losses.py and IxGAttributor).

    Attribution: input x gradient at the input layer, the one of their three (B-cos, IxG,
    Grad-CAM) defined for a conventional CNN at the resolution of the boxes/masks: B-cos needs
    a B-cos network, and Grad-CAM exists only at the last convolutional layer (4x4 on a 32x32
    smallcnn), where the energy loss would see the box only through an upsampling. The input
    layer is their code's default (--layer Input) and that of their README's Energy example.
    lambda = 1e-3 on the sum over the batch's images (that example's value; their code sums
    the per-image energy losses and means the classification loss).

    Its store, kind and pass cost are RRR's (one forward, a recorded input-gradient backward,
    the final backward); only the loss differs.
    """

    def step(self, model, x, s, y, *, epoch, cfg, generator=None, attack_model=None):
        self.require_saliency(s)
        attribution, logits = input_x_gradient(model, x, y)
        inside = (s > 0).any(1)  # (B, H, W): on the object in any saliency channel
        energy = energy_loss(attribution, inside).sum()
        return StepOutput(F.cross_entropy(logits.float(), y) + cfg.energy_lambda * energy, logits)


# In the order `satpipe list variants` shows them, after the paper's nine.
BASELINES: tuple[TrainingVariant, ...] = (
    FastAT(
        "fgsm-rs", "none",
        "FGSM-RS(x), CE: FGSM from a random start, step 1.25 eps (Wong et al., ICLR 2020)",
        "FGSM-RS",
    ),
    FastAT(
        "fgsm-rs-sat", "sat",
        "coin ? x_sat : FGSM-RS(x), CE: SAT mixed with fast AT (no paper; measured here)",
        "FGSM-RS-SAT",
    ),
    Free(
        "free",
        "x + delta, CE, minibatch replayed m times, delta carried over (Shafahi et al., "
        "NeurIPS 2019)",
        "Free",
    ),
    RightReasons(
        "rrr",
        "CE + lambda ||(1 - A) grad_x log p||^2, A = weak saliency > 0 (Ross et al., IJCAI 2017)",
        "RRR",
    ),
    GradientRegularised(
        "igr", "CE + lambda ||grad_x CE||^2, double backprop (Ross & Doshi-Velez, AAAI 2018)",
        "IGR",
    ),
    SaliencyGuided(
        "sgt",
        "CE + lambda KL(p(x) || p(x, k% lowest-saliency pixels random)) (Ismail et al., "
        "NeurIPS 2021)",
        "SGT",
    ),
    NoiseFGSM(
        "n-fgsm",
        "FGSM of 1 eps from x + U(-2 eps, 2 eps), no projection, CE (de Jorge et al., "
        "NeurIPS 2022)",
        "N-FGSM",
    ),
    GradAlign(
        "gradalign",
        "FGSM(x), CE + lambda (1 - cos(grad_x at x, at x + U(-eps, eps))), double backprop "
        "(Andriushchenko & Flammarion, NeurIPS 2020)",
        "GradAlign",
    ),
    EnergyGuided(
        "energy",
        "CE + lambda energy loss of input x gradient vs the box/mask, weak saliency (Rao, "
        "Böhle et al., ICCV 2023)",
        "Energy",
    ),
)  # fmt: skip
