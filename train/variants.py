"""The training variants: the nine of the SAT paper and the cheap-robustness baselines a
reviewer asks about, in one registry (filled here, the one place every variant is registered).

The paper's nine, as the authors' code runs them:

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

The cheap-robustness baselines (FGSM-RS, Free, RRR, IGR, SGT, N-FGSM, GradAlign, the Energy
loss, FGSM-RS-SAT) are defined in satpipe.train.baselines and registered here, after the nine,
so the registry is filled in this one module.

Attacks during training run in eval mode (BatchNorm uses running statistics and is not
updated by the attack iterates), as the official TRADES code and torchattacks do; the training
forward pass then runs in train mode. The baselines' attacks do the same
(satpipe.train.baselines says where their authors' code differs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from satpipe.core.modules import model_state
from satpipe.core.registry import Registry
from satpipe.train.baselines import BASELINES
from satpipe.train.eval.attacks import pgd, trades_attack
from satpipe.train.losses import trades_loss
from satpipe.train.perturb import sat_perturb_counted, uniform_noise
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
    "PAPER_VARIANTS",
    "VARIANTS",
    "WEAK_SALIENCY",
    "Cost",
    "StepOutput",
    "TrainingVariant",
    "Variant",
    "VariantConfig",
    "families",
]

ATTACKS = ("none", "pgd", "trades")
MIXES = ("none", "noise", "sat")


@dataclass(frozen=True)
class Variant(TrainingVariant):
    """A variant of the paper: which attack (none, pgd, trades) mixed with which cheap
    perturbation (none, noise, sat) by one coin per batch."""

    name: str
    attack: str
    mix: str
    description: str

    @property
    def needs_saliency(self) -> bool:
        return self.mix == "sat"

    @property
    def kind(self) -> str:
        if self.mix == "sat":
            return "sat"
        return "standard" if self.attack == "none" else "adversarial"

    @property
    def title(self) -> str:
        """The name the paper's tables use: Original, PGD + Uniform-Noise, TRADES-SAT, ..."""
        base = {"none": "Original", "pgd": "PGD", "trades": "TRADES"}[self.attack]
        if self.mix == "noise":
            return f"{base} + Uniform-Noise"
        if self.mix == "sat":
            return "SAT" if self.attack == "none" else f"{base}-SAT"
        return base

    def _cost(self, cfg: VariantConfig) -> Cost:
        """Expected forward/backward passes per batch for K = cfg.attack_steps attack steps.

        original*: 1 + 1. pgd: K+1 forward, K+1 backward; pgd-sat/-noise: 1 + (1-p_mix) K each
        (= 1 + K/2). trades: the attack's clean forward plus K steps, then two training passes
        (clean and adversarial): K+3 forward, K+2 backward; the mixed ones skip the attack with
        probability p_mix.
        """
        steps, p_mix = cfg.attack_steps, cfg.p_mix
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
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x_noise or x_sat (the perturbation that needs no gradient), and for x_sat the
        counts of what it took from the map (`sat_perturb_counted`)."""
        if self.mix == "noise":
            return uniform_noise(x, cfg.eps, generator), None
        return sat_perturb_counted(x, s, cfg.eps, sat_alpha(epoch, cfg), generator)

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
        """The paper's nine: see `TrainingVariant.step` (variant_base.py) for the arguments."""
        self.require_saliency(s)
        attack_model = model if attack_model is None else attack_model
        # One coin per batch: heads (probability p_mix) trains on the cheap perturbation.
        cheap = False
        if self.attack != "none" and self.mix != "none":
            cheap = coin(cfg.p_mix, generator)
        counts = None  # what x_sat took from the map, when this batch trains on it
        if self.attack == "none":
            x_in = x
            if self.mix != "none":
                x_in, counts = self.cheap_input(x, s, epoch, cfg, generator)
            logits = model(x_in)
            return step_output(F.cross_entropy(logits.float(), y), logits, False, counts, x)
        if self.attack == "pgd":
            if cheap:
                x_in, counts = self.cheap_input(x, s, epoch, cfg, generator)
            else:
                with model_state(attack_model, training=False):
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
            return step_output(F.cross_entropy(logits.float(), y), logits, not cheap, counts, x)
        # TRADES: a clean and a perturbed forward pass in train mode, as the official code.
        if cheap:
            x_adv, counts = self.cheap_input(x, s, epoch, cfg, generator)
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
        return step_output(loss, logits_clean, not cheap, counts, x)


# name -> variant: the paper's nine in its table order, then the baselines.
VARIANTS: Registry[TrainingVariant] = Registry("variant")


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


# The baselines, after the nine: the order of `satpipe list variants` and the CLI choices.
for _variant in BASELINES:
    VARIANTS.register(_variant.name, _variant, summary=_variant.description)


def families() -> dict[str, dict[str, str]]:
    """{attack: {mix: variant name}} of the (attack, mix) variants: the paper compares the
    mixes of one attack (SAT > +noise > plain) and their training times."""
    out: dict[str, dict[str, str]] = {}
    for name, v in VARIANTS.items():
        if isinstance(v, Variant):
            out.setdefault(v.attack, {})[v.mix] = name
    return out
