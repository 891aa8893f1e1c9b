"""Training losses beyond plain cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
