"""The fast loss paths (no full-size masks, JSD in closed form) against plain PyTorch, and the
quick mode of ``benchmarks/loss_speed.py``. The numerics proper are pinned in test_losses.py."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import distilkit as dk

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("loss_speed", ROOT / "benchmarks" / "loss_speed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("divergence", ["forward_kl", "jsd"])
@pytest.mark.parametrize("shape", [(2, 5, 7), (3, 9, 300)])
def test_value_and_gradient_equal_the_plain_version(divergence, shape):
    ref, diffs = _bench().agreement(divergence, shape, seed=3)
    assert math.isfinite(ref)
    for name, d in diffs.items():
        assert d["value_diff"] <= 1e-5 and d["grad_diff"] <= 1e-6, (name, d)


@pytest.mark.parametrize("divergence", dk.DIVERGENCES)
def test_nan_in_a_counted_row_is_not_hidden_without_checks(divergence):
    """``nan_to_num_`` zeroes the 0 log 0 entries; a NaN logit must still give a NaN loss."""
    s, t = torch.randn(2, 3, 6), torch.randn(2, 3, 6)
    for which in (s, t):
        x = which.clone()
        x[1, 2, 4] = math.nan
        args = (x, t) if which is s else (s, x)
        assert torch.isnan(dk.distillation_loss(*args, alpha=1.0, divergence=divergence, check_values=False))


@pytest.mark.parametrize("divergence", dk.DIVERGENCES)
def test_garbage_at_a_dropped_row_reaches_neither_value_nor_gradient(divergence):
    s, t = torch.randn(2, 3, 6), torch.randn(2, 3, 6)
    labels = torch.randint(0, 6, (2, 3))
    labels[0, 1] = -100
    base_s = s.clone().requires_grad_()
    base = dk.distillation_loss(base_s, t, labels, divergence=divergence, check_values=False)
    base.backward()
    for value in (math.nan, math.inf, -math.inf):  # the teacher's row any garbage; the student's a
        s2, t2 = s.clone(), t.clone()               # -inf (NaN there would reach the student's
        s2[0, 1, 2] = -math.inf                     # log_softmax backward, outside the loss)
        t2[0, 1, 3] = value
        s2.requires_grad_()
        loss = dk.distillation_loss(s2, t2, labels, divergence=divergence, check_values=False)
        loss.backward()
        torch.testing.assert_close(loss, base, rtol=1e-6, atol=1e-7)
        assert (s2.grad[0, 1] == 0).all()
        torch.testing.assert_close(s2.grad, base_s.grad, rtol=1e-6, atol=1e-7)


def test_jsd_with_extreme_beta_stays_finite():
    """beta * p underflows in float32 for beta ~ 1e-40: the mixture is then formed in log space."""
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[6.0, 0.0]])
    for beta in (1e-40, 1 - 1e-7, 0.5):
        d = dk.per_token_divergence(s, t, temperature=0.05, divergence="jsd", beta=beta)
        assert torch.isfinite(d).all(), beta


def test_quick_mode_runs():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "loss_speed.py"), "--quick"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "FAILED" not in out.stdout
