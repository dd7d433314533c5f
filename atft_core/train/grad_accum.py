"""Gradient accumulation that computes the batch objective exactly (issue 12 fault 9).

The losses are not sums of per-day terms: the Sharpe term is mean/std over the batch's days,
the per-horizon means count only the days a horizon is defined on, and undefined horizons are
dropped from the horizon weighting. Averaging micro-batch losses is therefore a different
objective (with 1-day micro-batches the Sharpe term is NaN and silently vanishes).

So the loss is never split. Two passes over the micro-batches (the "gradient cache" trick):
1. forward every micro-batch without autograd, concatenate the predictions (N, H) - small - and
   compute the full batch loss on them; its backward gives dL/dpred for every row;
2. forward every micro-batch again with autograd and backpropagate its rows of dL/dpred.
By the chain rule the accumulated parameter gradient is exactly the full batch's. Peak
activation memory stays that of one micro-batch; the cost is one extra no-grad forward. Dropout
draws the same masks in both passes: the RNG state before each micro-batch's first forward is
restored before its second.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from atft_core.batch import DayBatch

Forward = Callable[[DayBatch], Tensor]  # micro-batch -> pred (n, H)
Loss = Callable[[Tensor, DayBatch], tuple[Tensor, dict[str, float]]]  # (pred fp32, batch)


def _rng_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[Tensor, Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def backward_batch_objective(
    forward: Forward, loss_fn: Loss, batch: DayBatch, micro: Sequence[DayBatch], device: torch.device
) -> tuple[Tensor, dict[str, float]]:
    """Accumulate into ``.grad`` the gradient of ``loss_fn(forward(batch), batch)``.

    Args:
        forward: runs the model (under the caller's autocast) on a (micro-)batch.
        loss_fn: the batch loss on fp32 predictions.
        batch: the whole day batch (the loss is computed on it).
        micro: its consecutive day slices in order (``[batch]`` = no accumulation).

    Returns:
        ``(loss, components)`` of the whole batch; ``loss`` is detached.
    """
    if len(micro) <= 1:
        pred = forward(batch)
        loss, comps = loss_fn(pred.float(), batch)
        loss.backward()
        return loss.detach(), comps
    states, preds = [], []
    with torch.no_grad():
        for mb in micro:
            states.append(_rng_state(device))
            preds.append(forward(mb).float())
    end_state = _rng_state(device)
    full = torch.cat(preds).requires_grad_(True)  # (N, H) leaf: dL/dpred lands in full.grad
    loss, comps = loss_fn(full, batch)
    loss.backward()
    grad = full.grad
    row = 0
    for mb, state, p in zip(micro, states, preds):
        _set_rng_state(state, device)
        n = p.shape[0]
        forward(mb).float().backward(grad[row:row + n])
        row += n
    _set_rng_state(end_state, device)
    return loss.detach(), comps
