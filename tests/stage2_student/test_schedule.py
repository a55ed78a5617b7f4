"""lr_at: linear warm-up then cosine to final_lr_ratio * peak."""

import math

import pytest

from stage2_student.schedule import lr_at


def test_regimes_by_hand():
    kw = dict(peak_lr=1.0, total_steps=110, warmup_steps=10, final_lr_ratio=0.1)
    assert lr_at(0, **kw) == pytest.approx(0.1)  # (0+1)/10: step 0 already learns
    assert lr_at(4, **kw) == pytest.approx(0.5)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(10, **kw) == pytest.approx(1.0)  # cosine starts at the peak
    assert lr_at(60, **kw) == pytest.approx(0.1 + 0.5 * (1 + math.cos(math.pi * 0.5)) * 0.9)  # midpoint = 0.55
    assert lr_at(109, **kw) == pytest.approx(0.1 + 0.5 * (1 + math.cos(math.pi * 0.99)) * 0.9)
    assert lr_at(500, **kw) == pytest.approx(0.1)


def test_monotone_decay_without_warmup():
    lrs = [lr_at(s, peak_lr=3e-4, total_steps=50, warmup_steps=0, final_lr_ratio=0.0) for s in range(50)]
    assert lrs[0] == pytest.approx(3e-4)
    assert all(b <= a for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] > 0


def test_the_final_rate_is_a_share_of_the_peak_not_the_share_itself():
    # (every other test uses peak_lr = 1, where the two are the same number)
    assert lr_at(500, peak_lr=3e-4, total_steps=110, warmup_steps=10, final_lr_ratio=0.1) == pytest.approx(3e-5)
    assert lr_at(109, peak_lr=3e-4, total_steps=110, warmup_steps=10, final_lr_ratio=0.1) == pytest.approx(
        3e-5 + 0.5 * (3e-4 - 3e-5) * (1 + math.cos(math.pi * 99 / 100)))
