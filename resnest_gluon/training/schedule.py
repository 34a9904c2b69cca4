"""The recipe's schedules (Zhang et al., arXiv:2004.08955, section 5.1): learning rate, DropBlock ramp,
weight decay only on conv and dense weights."""

import math


def lr_at(step: int, peak_lr: float, warmup_steps: int, total_steps: int, final_lr: float = 0.0) -> float:
    """Linear warm-up from 0 to ``peak_lr`` over ``warmup_steps``, then a cosine decay to ``final_lr``.

    ``step`` counts optimizer updates from 0; the rate depends on the step alone, so a resumed run
    continues the schedule exactly.
    """
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return final_lr + 0.5 * (peak_lr - final_lr) * (1.0 + math.cos(math.pi * progress))


def drop_prob_at(epoch: int, epochs: int, max_prob: float) -> float:
    """DropBlock probability of ``epoch`` (0-based): a linear ramp from 0 to ``max_prob`` (last epoch)."""
    if epochs <= 1:
        return max_prob
    return max_prob * min(epoch, epochs - 1) / (epochs - 1)


def no_weight_decay(params) -> int:
    """Sets ``wd_mult = 0`` on BN gamma/beta and on biases (the recipe decays conv and dense weights only).

    Returns the number of parameters changed.
    """
    changed = 0
    for name, param in params.items():
        if name.endswith(("gamma", "beta", "bias")):
            param.wd_mult = 0.0
            changed += 1
    return changed
