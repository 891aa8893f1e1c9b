"""The nine training variants of the SAT paper: the one place that defines them.

| variant        | the batch trains on                     | loss   |
|----------------|-----------------------------------------|--------|
| original       | x                                       | CE     |
| original-noise | x_noise                                 | CE     |
| sat            | x_sat                                   | CE     |
| pgd            | PGD(x)                                  | CE     |
| pgd-noise      | coin ? x_noise : PGD(x)                 | CE     |
| pgd-sat        | coin ? x_sat : PGD(x)                   | CE     |
| trades         | x and TRADES-attack(x)                  | TRADES |
| trades-noise   | x and (coin ? x_noise : TRADES-attack(x)) | TRADES |
| trades-sat     | x and (coin ? x_sat : TRADES-attack(x))   | TRADES |

One coin per batch, heads with probability `p_mix` (0.5), as the authors' code runs them: half
the batches of the mixed variants skip the K-step attack, which is why PGD-SAT and TRADES-SAT
train faster than PGD and TRADES. (The authors' code also adds a random start before the SAT
step in PGD-SAT; satpipe follows the paper's definition: x_sat as is.)

Attacks during training run in eval mode (BatchNorm uses running statistics and is not
updated by the attack iterates), as the official TRADES code and torchattacks do; the training
forward pass then runs in train mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from satpipe.errors import SatpipeError
from satpipe.registry import Registry
from satpipe.train.attacks import model_mode, pgd, trades_attack
from satpipe.train.losses import trades_loss
from satpipe.train.perturb import alpha_schedule, sat_perturb, uniform_noise

ATTACKS = ("none", "pgd", "trades")
MIXES = ("none", "noise", "sat")


@dataclass(frozen=True)
class VariantConfig:
    """Hyper-parameters of the variants (pixel units). Defaults: the paper's and Madry's.

    eps: L-inf size of every perturbation (SAT, noise, attacks), 8/255.
    attack_steps: K, sign steps of the PGD / TRADES training attack, 7 (Madry's CIFAR preset).
    attack_step_size: 2/255 per step.
    p_mix: probability that a batch of a mixed variant trains on x_sat / x_noise, 0.5.
    alpha_base: a in alpha_t = a ** (t / 10), 0.6.
    trades_beta: weight of the TRADES KL term, 6.
    """

    eps: float = 8 / 255
    attack_steps: int = 7
    attack_step_size: float = 2 / 255
    p_mix: float = 0.5
    alpha_base: float = 0.6
    trades_beta: float = 6.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.eps <= 1.0:
            raise SatpipeError(f"eps must be in [0, 1] (pixel units), got {self.eps}")
        if self.attack_steps < 0 or self.attack_step_size < 0:
            raise SatpipeError("attack steps and step size must be >= 0")
        if not 0.0 <= self.p_mix <= 1.0:
            raise SatpipeError(f"p_mix must be in [0, 1], got {self.p_mix}")
        if not 0.0 < self.alpha_base <= 1.0:
            raise SatpipeError(f"alpha base must be in (0, 1], got {self.alpha_base}")
        if self.trades_beta < 0:
            raise SatpipeError(f"TRADES beta must be >= 0, got {self.trades_beta}")


@dataclass(frozen=True)
class Cost:
    """Expected passes over one batch: forward passes and backward passes (each full size).

    `work` weighs a backward pass as two forward passes (the usual estimate), so ratios of
    `work` predict ratios of epoch times; for pgd vs pgd-sat it gives (1 + K/2) / (1 + K).
    """

    forward: float
    backward: float

    @property
    def work(self) -> float:
        return self.forward + 2.0 * self.backward


@dataclass
class StepOutput:
    """What one training step produced: the loss to backprop, the logits (B, K) on the
    inputs whose accuracy the trainer reports (the trained input; the clean half for TRADES),
    and whether the K-step attack ran (False for the batches a coin sent to x_sat / x_noise)."""

    loss: torch.Tensor
    logits: torch.Tensor
    attacked: bool = False


@dataclass(frozen=True)
class Variant:
    """A training variant: which attack (none, pgd, trades) mixed with which cheap
    perturbation (none, noise, sat) by one coin per batch."""

    name: str
    attack: str
    mix: str
    description: str

    @property
    def needs_saliency(self) -> bool:
        return self.mix == "sat"

    @property
    def title(self) -> str:
        """The name the paper's tables use: Original, PGD + Uniform-Noise, TRADES-SAT, ..."""
        base = {"none": "Original", "pgd": "PGD", "trades": "TRADES"}[self.attack]
        if self.mix == "noise":
            return f"{base} + Uniform-Noise"
        if self.mix == "sat":
            return "SAT" if self.attack == "none" else f"{base}-SAT"
        return base

    def cost(self, steps: int, p_mix: float = 0.5) -> Cost:
        """Expected forward/backward passes per batch for K = `steps` attack steps.

        original*: 1 + 1. pgd: K+1 forward, K+1 backward; pgd-sat/-noise: 1 + (1-p_mix) K each
        (= 1 + K/2). trades: the attack's clean forward plus K steps, then two training passes
        (clean and adversarial): K+3 forward, K+2 backward; the mixed ones skip the attack with
        probability p_mix.
        """
        q = 1.0 if self.mix == "none" else 1.0 - p_mix  # probability the attack runs
        if self.attack == "none":
            return Cost(1.0, 1.0)
        if self.attack == "pgd":
            return Cost(1.0 + q * steps, 1.0 + q * steps)
        return Cost(2.0 + q * (steps + 1), 2.0 + q * steps)

    def cheap_input(
        self,
        x: torch.Tensor,
        s: torch.Tensor | None,
        epoch: int,
        cfg: VariantConfig,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """x_noise or x_sat (the perturbation that needs no gradient)."""
        if self.mix == "noise":
            return uniform_noise(x, cfg.eps, generator)
        return sat_perturb(x, s, cfg.eps, alpha_schedule(epoch, cfg.alpha_base), generator)

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
        if self.needs_saliency and s is None:
            raise SatpipeError(f"variant '{self.name}' needs a saliency store (--saliency)")
        attack_model = model if attack_model is None else attack_model
        # One coin per batch: heads (probability p_mix) trains on the cheap perturbation.
        cheap = False
        if self.attack != "none" and self.mix != "none":
            cheap = bool(torch.rand((), generator=generator, device=x.device) < cfg.p_mix)
        if self.attack == "none":
            x_in = x if self.mix == "none" else self.cheap_input(x, s, epoch, cfg, generator)
            logits = model(x_in)
            return StepOutput(F.cross_entropy(logits.float(), y), logits)
        if self.attack == "pgd":
            if cheap:
                x_in = self.cheap_input(x, s, epoch, cfg, generator)
            else:
                with model_mode(attack_model, False):
                    x_in = pgd(
                        attack_model,
                        x,
                        y,
                        cfg.eps,
                        cfg.attack_step_size,
                        cfg.attack_steps,
                        random_start=True,
                        generator=generator,
                    )
            logits = model(x_in)
            return StepOutput(F.cross_entropy(logits.float(), y), logits, not cheap)
        # TRADES: a clean and a perturbed forward pass in train mode, as the official code.
        if cheap:
            x_adv = self.cheap_input(x, s, epoch, cfg, generator)
        else:
            x_adv = trades_attack(
                attack_model,
                x,
                cfg.eps,
                cfg.attack_step_size,
                cfg.attack_steps,
                generator=generator,
            )
        logits_clean = model(x)
        logits_adv = model(x_adv)
        loss = trades_loss(logits_clean, logits_adv, y, cfg.trades_beta)
        return StepOutput(loss, logits_clean, not cheap)


# name -> Variant, in the paper's table order.
VARIANTS: Registry[Variant] = Registry("variant")


def register_variant(name: str, *, attack: str, mix: str, description: str) -> Variant:
    """Register a variant built from (attack, mix); the name must be new."""
    if attack not in ATTACKS or mix not in MIXES:
        raise ValueError(f"variant {name}: attack must be one of {ATTACKS}, mix one of {MIXES}")
    return VARIANTS.register(name, Variant(name, attack, mix, description), summary=description)


_ATTACK_TEXT: dict[str, Callable[[str], str]] = {
    "none": lambda m: {
        "none": "clean x, CE",
        "noise": "x + uniform noise, CE",
        "sat": "x_sat (saliency perturbation), CE",
    }[m],
    "pgd": lambda m: "PGD(x), CE" if m == "none" else f"coin ? x_{m} : PGD(x), CE",
    "trades": lambda m: (
        "x and TRADES-attack(x), TRADES loss"
        if m == "none"
        else f"x and (coin ? x_{m} : TRADES-attack(x)), TRADES loss"
    ),
}

_PAPER = (
    ("original", "none", "none"),
    ("original-noise", "none", "noise"),
    ("sat", "none", "sat"),
    ("pgd", "pgd", "none"),
    ("pgd-noise", "pgd", "noise"),
    ("pgd-sat", "pgd", "sat"),
    ("trades", "trades", "none"),
    ("trades-noise", "trades", "noise"),
    ("trades-sat", "trades", "sat"),
)
for _name, _attack, _mix in _PAPER:
    register_variant(_name, attack=_attack, mix=_mix, description=_ATTACK_TEXT[_attack](_mix))

# The paper's nine, in its table order (the presets' default grid).
PAPER_VARIANTS: tuple[str, ...] = tuple(name for name, _, _ in _PAPER)


def families() -> dict[str, dict[str, str]]:
    """{attack: {mix: variant name}} of the (attack, mix) variants: the paper compares the
    mixes of one attack (SAT > +noise > plain) and their training times."""
    out: dict[str, dict[str, str]] = {}
    for name, v in VARIANTS.items():
        if isinstance(v, Variant):
            out.setdefault(v.attack, {})[v.mix] = name
    return out
