"""Pure learning-rate schedule: linear warm-up, then cosine decay to a final fraction of the peak."""

from __future__ import annotations

import math


def lr_at(step: int, *, peak_lr: float, total_steps: int, warmup_steps: int, final_lr_ratio: float) -> float:
    """Learning rate for optimizer step ``step`` (0-based: the update that turns step into step+1).

    Three regimes, as in nanoGPT's ``get_lr``:
      1. step < warmup_steps: linear from peak/warmup up to peak (never 0, so step 0 already learns);
      2. warmup_steps <= step < total_steps: cosine from peak down to final_lr_ratio * peak;
      3. step >= total_steps: final_lr_ratio * peak (only reached if a caller runs past the plan).
    """
    final_lr = final_lr_ratio * peak_lr
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return final_lr
    decay_steps = max(1, total_steps - warmup_steps)
    progress = (step - warmup_steps) / decay_steps  # in [0, 1)
    return final_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak_lr - final_lr)
