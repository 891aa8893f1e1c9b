"""What every training variant is: its hyper-parameters, its pass cost, and its per-batch hook.

A variant is an object with a `name`, a one-line `description`, a `title` for tables, and

    cost(steps=None, p_mix=None, cfg=None) -> Cost      expected passes over one batch
    step(model, x, s, y, *, epoch, cfg, generator, attack_model) -> StepOutput
    train_batch(model, optimizer, x, s, y, *, ...)    -> StepOutput   what the trainer calls

`train_batch` is everything a variant does with one batch, the optimizer step included: by
default one `step`, one backward pass and one optimizer step; Free replays the batch `m`
times with its perturbation carried over. `train_one_epoch` (train/epoch.py: the trainer
and `satpipe bench train` alike) calls only `begin_epoch` and `train_batch`, so a benchmark
times exactly what training does and no variant is a special case in the loop.

The concrete variants: the paper's nine in train/variants.py (which holds the one registry),
the baselines in train/baselines.py.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import nn

from satpipe.core.errors import SatpipeError
from satpipe.core.seeding import derive_seed

# Saliency-store methods that are weak saliency (+1 on the object, -1 elsewhere, from the
# dataset's masks or boxes): the pipeline's `mask` and `bbox` (tests/test_baselines.py checks
# this against the pipeline's method registry, which this layer may not import).
WEAK_SALIENCY = ("mask", "bbox")


@dataclass(frozen=True)
class VariantConfig:
    """Hyper-parameters of the variants (pixel units). Defaults: the papers'.

    eps: L-inf size of every perturbation (SAT, noise, attacks), 8/255.
    attack_steps: K, sign steps of the PGD / TRADES training attack, 7 (Madry's CIFAR preset).
    attack_step_size: 2/255 per step.
    p_mix: probability that a batch of a mixed variant trains on x_sat / x_noise, 0.5.
    alpha_base: a of SAT's alpha schedule, 0.6 (alpha: the chance an element is noise).
    alpha_schedule: `progress` (a ** (p H / 10), p the share of the run done), `epoch`
        (a ** (t / 10), the paper's code) or `constant` (a); see train/alpha_schedules.py.
    alpha_horizon: H of `progress`, 100 (the paper's epochs).
    alpha: the alpha of the step being run, set per step by the training loop from the
        schedule; None (a direct call of `step`): the `epoch` formula at the step's epoch.
    trades_beta: weight of the TRADES KL term, 6.
    fgsm_step_ratio: FGSM-RS step as a multiple of eps, 1.25 (Wong et al. 2020, "Fast is better
        than free", Sec. 4: alpha = 1.25 eps; their code's --alpha 10 at --epsilon 8).
    free_replays: m, replays of each minibatch in Free, 8 (Shafahi et al. 2019, the m = 8
        CIFAR-10 rows of Table 1; also the default of Wong et al.'s train_free.py).
    rrr_lambda: weight of RRR's right-reasons term, 1000 (Ross et al. 2017: the lambda_1 of
        their experiments, `MultilayerPerceptron(l2_grads=1000)` in github.com/dtak/rrr).
    igr_lambda: weight of IGR's squared input-gradient norm per image, 10. Ross & Doshi-Velez
        2018 sweep it rather than fix it (scripts/train_all.py of their code: 10^2..10^5 on the
        l2_loss of the gradient of the batch-mean CE, i.e. lambda_code / (2 B) in this per-image
        form: 0.2..195 at their batch of 256); 10 sits inside that range.
    sgt_fraction: k, share of pixels SGT masks (lowest saliency first), 0.1 (Ismail et al. 2021,
        the CIFAR-10 setting of their code: train_CIFAR.py --featuresDroped 0.1).
    sgt_lambda: weight of SGT's KL term, 1 (their code adds the KL unweighted).
    nfgsm_noise: k, N-FGSM's noise U(-k eps, k eps) as a multiple of eps, 2 (de Jorge et al.
        2022: --unif 2, the paper's default); its step is 1 eps (--alpha 8 at --epsilon 8).
    gradalign_lambda: weight of GradAlign's 1 - cos term, 0.2 (Andriushchenko & Flammarion
        2020: --grad_align_cos_lambda 0.2 at eps 8/255 on CIFAR-10, sh/exps_diff_eps_cifar10.sh).
    energy_lambda: weight of the energy loss, summed over the batch's images, 1e-3 (Rao, Böhle
        et al. 2023: the --localization_loss_lambda of their README's Energy-loss example;
        the paper sweeps it for its Pareto fronts).
    """

    eps: float = 8 / 255
    attack_steps: int = 7
    attack_step_size: float = 2 / 255
    p_mix: float = 0.5
    alpha_base: float = 0.6
    alpha_schedule: str = "progress"
    alpha_horizon: float = 100.0
    alpha: float | None = None
    trades_beta: float = 6.0
    fgsm_step_ratio: float = 1.25
    free_replays: int = 8
    rrr_lambda: float = 1000.0
    igr_lambda: float = 10.0
    sgt_fraction: float = 0.1
    sgt_lambda: float = 1.0
    nfgsm_noise: float = 2.0
    gradalign_lambda: float = 0.2
    energy_lambda: float = 1e-3

    def __post_init__(self) -> None:
        if not 0.0 <= self.eps <= 1.0:
            raise SatpipeError(f"eps must be in [0, 1] (pixel units), got {self.eps}")
        if self.attack_steps < 0 or self.attack_step_size < 0:
            raise SatpipeError("attack steps and step size must be >= 0")
        if not 0.0 <= self.p_mix <= 1.0:
            raise SatpipeError(f"p_mix must be in [0, 1], got {self.p_mix}")
        from satpipe.train.alpha_schedules import ALPHA_SCHEDULES, check_alpha

        check_alpha(self.alpha_base, self.alpha_horizon)
        ALPHA_SCHEDULES.get(self.alpha_schedule)
        if self.alpha is not None and not 0.0 <= self.alpha <= 1.0:
            raise SatpipeError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.trades_beta < 0:
            raise SatpipeError(f"TRADES beta must be >= 0, got {self.trades_beta}")
        if not self.fgsm_step_ratio > 0:
            raise SatpipeError(f"FGSM-RS step ratio must be > 0, got {self.fgsm_step_ratio}")
        if self.free_replays < 1:
            raise SatpipeError(f"free: --free-replays (m) must be >= 1, got {self.free_replays}")
        if self.nfgsm_noise < 0:
            raise SatpipeError(f"--nfgsm-noise must be >= 0, got {self.nfgsm_noise}")
        for name in ("rrr_lambda", "igr_lambda", "sgt_lambda", "gradalign_lambda", "energy_lambda"):
            if getattr(self, name) < 0:
                flag = "--" + name.replace("_", "-")
                raise SatpipeError(f"{flag} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.sgt_fraction < 1.0:
            raise SatpipeError(f"--sgt-fraction must be in (0, 1), got {self.sgt_fraction}")


VARIANT_FIELDS = tuple(f.name for f in fields(VariantConfig) if f.name != "alpha")


def sat_alpha(epoch: int, cfg: VariantConfig) -> float:
    """The alpha SAT draws with: the step's (`cfg.alpha`, set by the training loop from the
    run's schedule), else the paper's per-epoch a ** (epoch / 10)."""
    if cfg.alpha is not None:
        return float(cfg.alpha)
    from satpipe.train.perturb import alpha_schedule

    return alpha_schedule(epoch, cfg.alpha_base)


@dataclass(frozen=True)
class Cost:
    """Expected passes over one batch: forward passes and backward passes (each full size).

    `create_graph` counts the backward passes (already in `backward`) that record their own
    graph to be differentiated once more (double backprop: RRR, IGR). `work` weighs a backward
    pass as two forward passes (the usual estimate) and a recorded one as four more: the final
    backward pass runs through it, second-order terms of every layer included (RRR and IGR
    measured 3.2-3.4x Original per batch on a CPU; this predicts 3x). Ratios of `work` predict
    ratios of epoch times; for pgd vs pgd-sat it gives (1 + K/2) / (1 + K).
    """

    forward: float
    backward: float
    create_graph: float = 0.0

    @property
    def work(self) -> float:
        return self.forward + 2.0 * self.backward + 4.0 * self.create_graph


@dataclass
class StepOutput:
    """What one training step produced: the loss to backprop, the logits (B, K) on the
    inputs whose accuracy the trainer reports (the trained input; the clean half for TRADES),
    whether the attack ran (False for the batches a coin sent to x_sat / x_noise), and for a
    batch perturbed by SAT what it took from the map: `sat` the device tensor of
    `sat_perturb_counted` ([elements from the map, sum of their |s|]) over `sat_elements`
    elements drawn."""

    loss: torch.Tensor
    logits: torch.Tensor
    attacked: bool = False
    sat: torch.Tensor | None = None
    sat_elements: int = 0


def step_output(loss, logits, attacked: bool, counts, x: torch.Tensor) -> StepOutput:
    """A StepOutput carrying SAT's map counts when this batch was perturbed by SAT."""
    if counts is None:
        return StepOutput(loss, logits, attacked)
    return StepOutput(loss, logits, attacked, counts, x.numel())


COIN_STREAM = 0xC014  # tags the coin's host stream apart from the step's device stream


def coin(p: float, generator: torch.Generator | None) -> bool:
    """One coin per batch, heads with probability p (the mixed variants' coin), drawn on the
    host: the branch is a Python decision, and reading a draw made on a GPU back would stall
    the step until the device catches up (a host sync per step).

    A CPU generator (or none: the global CPU one) is drawn from directly, as always; a device
    generator seeds a CPU one from its own seed (a function of the step's coordinates, read
    on the host without a sync), so the coin stays a function of (seed, epoch, step, rank)."""
    if generator is not None and generator.device.type != "cpu":
        generator = torch.Generator().manual_seed(
            derive_seed(generator.initial_seed(), COIN_STREAM)
        )
    return bool(torch.rand((), generator=generator) < p)


class TrainingVariant:
    """Base class of every variant. Subclasses set `name`, `description`, `title` and
    implement `_cost(cfg)` and `step(...)`; Free overrides `train_batch` as well.

    needs_saliency: the step reads a saliency map s (a store given with --saliency).
    single_step: trains on one-step attacks (FGSM-RS, Free), the kind Wong et al. found prone
        to catastrophic overfitting (what the trainer's --guard-rows guard is for).
    """

    name: str
    description: str
    title: str
    needs_saliency: bool = False
    single_step: bool = False
    saliency_kind: str = "a saliency store"  # what --saliency must be, for error messages
    kind: str = "other"  # for plots: standard, adversarial, sat, fast-at, explanation

    def cost(
        self, steps: int | None = None, p_mix: float | None = None, cfg: VariantConfig | None = None
    ) -> Cost:
        """Expected forward/backward passes per batch under `cfg` (default VariantConfig());
        `steps` and `p_mix` override its attack steps K and mixing probability."""
        cfg = cfg if cfg is not None else VariantConfig()
        changes: dict[str, Any] = {}
        if steps is not None:
            changes["attack_steps"] = steps
        if p_mix is not None:
            changes["p_mix"] = p_mix
        return self._cost(replace(cfg, **changes) if changes else cfg)

    def _cost(self, cfg: VariantConfig) -> Cost:
        raise NotImplementedError

    def step(
        self,
        model: nn.Module,
        x: torch.Tensor,
        s: torch.Tensor | None,
        y: torch.Tensor,
        *,
        epoch: int,
        cfg: VariantConfig,
        generator: torch.Generator | None = None,
        attack_model: nn.Module | None = None,
    ) -> StepOutput:
        """One batch: build the training input(s) and return the loss (not yet backpropagated).

        Args:
            model: the model being trained, in train mode (possibly DDP-wrapped).
            x: (B, C, H, W) in [0, 1]; s: (B, Cs, H, W) saliency or None; y: (B,) labels.
            epoch: 0-based epoch (sets alpha_t). generator: all randomness of this step.
            attack_model: the unwrapped module the attacks differentiate (defaults to
                `model`); attacks need no gradient synchronisation across DDP ranks.
        """
        raise NotImplementedError

    def begin_epoch(self) -> dict[str, Any]:
        """Fresh per-epoch state handed to every `train_batch` of the epoch (Free keeps its
        perturbation here); nothing outlives the epoch, so a resumed run needs no more."""
        return {}

    def train_batch(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        x: torch.Tensor,
        s: torch.Tensor | None,
        y: torch.Tensor,
        *,
        epoch: int,
        cfg: VariantConfig,
        generator: torch.Generator | None = None,
        attack_model: nn.Module | None = None,
        autocast: contextlib.AbstractContextManager | None = None,
        state: dict[str, Any] | None = None,
    ) -> StepOutput:
        """Everything this variant does with one batch: `step`, backward, optimizer step.

        `autocast` (a reusable context manager, e.g. torch.autocast) wraps the forward passes
        only; `state` is what `begin_epoch` returned. Returns the step's output (loss, logits)
        for the trainer's running loss and accuracy.
        """
        with autocast if autocast is not None else contextlib.nullcontext():
            out = self.step(
                model, x, s, y, epoch=epoch, cfg=cfg, generator=generator,
                attack_model=attack_model,
            )  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        return out

    def data_passes(self, epochs: int, cfg: VariantConfig) -> int:
        """Passes over the training data for a run of `epochs` (Free: epochs / m)."""
        return epochs

    def passes_note(self, epochs: int, cfg: VariantConfig) -> str | None:
        """One line for stderr when `data_passes` is not simply `epochs`; else None."""
        return None

    def check_saliency(self, uri: str, method: str) -> None:
        """Refuse (one line) a saliency store this variant cannot use; any store by default."""

    def require_saliency(self, s: torch.Tensor | None) -> None:
        if self.needs_saliency and s is None:
            raise SatpipeError(f"variant '{self.name}' needs a saliency store (--saliency)")
