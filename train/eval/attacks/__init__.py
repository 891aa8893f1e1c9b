"""L-inf attacks: the functions the trainer calls, and the registry evaluation runs from.

    from satpipe.train.eval.attacks import pgd, fgsm, fgsm_rs, trades_attack  # training-time
    from satpipe.train.eval.attacks import ATTACKS                       # `satpipe list attacks`
    ATTACKS.get("autoattack")                                       # an Attack entry

| attacks                                    | implementation                                   |
|--------------------------------------------|--------------------------------------------------|
| fgsm, pgd, pgd-cw                          | here (`gradient.py`), used every training step   |
| apgd-ce, apgd-t, fab-t, square, autoattack | pyautoattack, Croce & Hein's (`reference.py`)    |
| cw-l2 (L2, minimum norm)                   | torchattacks' CW + a binary search (`cw.py`)     |

`attack_set` (runner.py) runs any of them over a whole evaluation set; an ensemble runs its
components in turn on the points still robust.
"""

from satpipe.train.eval.attacks.base import (
    ATTACKS,
    Attack,
    AttackContext,
    n_target_classes,
)
from satpipe.train.eval.attacks.gradient import (
    cw_margin,
    fgsm,
    fgsm_rs,
    input_grad,
    nfgsm,
    pgd,
    project,
    trades_attack,
)
from satpipe.train.eval.attacks.reference import ensemble_components, library_version
from satpipe.train.eval.attacks.runner import Outcome, attack_set, clean_correct, min_norm_set

# isort: off
# cw-l2 registers after the L-inf attacks: the registry's order is the listing's and the docs'.
from satpipe.train.eval.attacks.cw import cw_l2
# isort: on

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackContext",
    "Outcome",
    "attack_set",
    "clean_correct",
    "cw_l2",
    "cw_margin",
    "ensemble_components",
    "fgsm",
    "fgsm_rs",
    "input_grad",
    "library_version",
    "min_norm_set",
    "n_target_classes",
    "nfgsm",
    "pgd",
    "project",
    "trades_attack",
]
