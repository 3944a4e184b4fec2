"""Masked reductions over response tokens.

Token tensors are [B, T] over response tokens with a `mask` [B, T] (bool or 0/1 float) that is
true on real response tokens. Entries outside the mask may hold anything (padding, NaN): they
are selected away with `torch.where`, never multiplied by zero, so they cannot leak NaN/inf.
"""

from typing import Optional

import torch


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: Optional[int] = None) -> torch.Tensor:
    """Sum of `x` over masked entries.

    x: [...], mask: same shape (bool or 0/1). dim=None sums everything (scalar); otherwise
    reduces that dimension.
    """
    kept = torch.where(mask.bool(), x, torch.zeros_like(x))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: Optional[int] = None) -> torch.Tensor:
    """Mean of `x` over masked entries; 0 where there is no masked entry.

    x: [...], mask: same shape. dim=None: scalar; otherwise reduces that dimension.
    """
    count = mask.bool().sum() if dim is None else mask.bool().sum(dim)
    # An empty row (a response of zero tokens) has mean 0 rather than 0/0 = NaN.
    return masked_sum(x, mask, dim) / count.clamp(min=1).to(x.dtype)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over all masked entries; 0 outside the mask.

    x: [B, T], mask: [B, T] -> [B, T]. std is the population std (divide by the count, not
    count - 1) so that the output has exactly unit variance over the masked entries.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


def loss_denominator(
    own_count: torch.Tensor, override: Optional[float], like: torch.Tensor
) -> torch.Tensor:
    """Denominator of a token- or sample-mean loss: `override` when given, else `own_count`.

    A learner that splits a mini-batch into micro-batches passes the mini-batch's count as
    `override` (the `num_tokens` / `num_samples` arguments of the losses), so that summing the
    micro-batch losses gives the mini-batch loss exactly. Never below 1 (an empty batch gives
    loss 0, not NaN). Returned as a scalar of `like`'s dtype and device.
    """
    count = own_count if override is None else torch.as_tensor(override)
    return count.to(device=like.device, dtype=like.dtype).clamp(min=1)
