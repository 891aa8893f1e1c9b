"""Training losses beyond plain cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def trades_loss(
    logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float = 6.0
) -> torch.Tensor:
    """TRADES: CE(f(x), y) + beta * KL_batchmean(p(x) || p(x_adv)), a scalar.

    The official formula, `nn.KLDivLoss(reduction="batchmean")(log_softmax(adv), softmax(clean))`
    (sum over classes and batch, divided by the batch size). Gradients flow through both the
    clean and the adversarial logits, as in the official code.

    Args:
        logits_clean, logits_adv: (B, K) logits on x and on the TRADES attack of x.
        y: (B,) int64 labels. beta: robustness weight (6 by default, the paper's).
    """
    logits_clean, logits_adv = logits_clean.float(), logits_adv.float()
    natural = F.cross_entropy(logits_clean, y)
    robust = F.kl_div(
        F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="batchmean"
    )
    return natural + beta * robust


def _input_leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().requires_grad_(True)


def rrr_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, relevant: torch.Tensor, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right for the Right Reasons (Ross, Hughes, Doshi-Velez 2017), a scalar and the logits.

        CE(f(x), y) + lam * mean_n sum_d ((1 - A_nd) * d/dx_nd sum_k log p_k(x_n))^2

    A = `relevant` (1 on the object); the gradient is of the summed log-probabilities, as in
    the paper's Eq. 1 and the authors' code (github.com/dtak/rrr: gradients of log_prob_ys),
    taken with create_graph so the penalty trains the weights (double backprop). The authors
    sum both terms over the batch; the mean over images here is the same ratio.

    Args:
        model: maps (B, C, H, W) in [0, 1] to logits (B, K); called once, in its current mode.
        x: (B, C, H, W) in [0, 1]; y: (B,) int64.
        relevant: (B, 1 or C, H, W) in {0, 1}, broadcast over colour channels.
        lam: lambda_1 of the paper (>= 0).
    """
    x = _input_leaf(x)
    logits = model(x)
    log_p = F.log_softmax(logits.float(), dim=1)
    (g,) = torch.autograd.grad(log_p.sum(), x, create_graph=True)
    penalty = ((1.0 - relevant.to(g.dtype)) * g).pow(2).flatten(1).sum(1).mean()
    return F.nll_loss(log_p, y) + lam * penalty, logits


def igr_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Input gradient regularisation (Ross & Doshi-Velez 2018), a scalar and the logits.

        CE(f(x), y) + lam * mean_n || d/dx_n CE(f(x_n), y_n) ||_2^2

    The paper's objective sums both terms over the batch (the mean over images is the same
    ratio); each image's gradient is of its own CE (the gradient of the summed CE), with
    create_graph so the penalty trains the weights: double backprop (Drucker & LeCun 1991).

    Args: as `rrr_loss`; lam >= 0.
    """
    x = _input_leaf(x)
    logits = model(x)
    ce = F.cross_entropy(logits.float(), y, reduction="none")
    (g,) = torch.autograd.grad(ce.sum(), x, create_graph=True)
    return ce.mean() + lam * g.pow(2).flatten(1).sum(1).mean(), logits


def sgt_loss(
    logits_clean: torch.Tensor, logits_masked: torch.Tensor, y: torch.Tensor, lam: float = 1.0
) -> torch.Tensor:
    """Saliency Guided Training (Ismail et al. 2021): CE(f(x), y) + lam * KL(p(x) || p(x_masked)).

    The KL is `batchmean` with gradients through both arguments, as the authors' code
    (`KLDivLoss(reduction='batchmean')(log_softmax(masked), softmax(output))`): the same
    formula as TRADES' loss with lam for beta.

    Args: logits (B, K) on x and on its masked copy; y (B,) int64; lam >= 0 (1 in their code).
    """
    return trades_loss(logits_clean, logits_masked, y, lam)
