"""The experiment scripts' quick modes, as CI runs them: each trains small versions of its
methods with one seed, prints its direction checks and exits non-zero when one fails (or when
anything crashes). The full modes, with three seeds, write ``results/*.json``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["quality.py", "controls.py", "topk_cache.py", "gkd_d2t.py", "lm_divergences.py", "loss_memory.py", "temperature_alpha.py",
           "capacity_gap.py", "skew_kl.py", "temperature_alpha_lr.py", "student_size.py", "cross_tokenizer.py", "hidden_states.py", "d2t_causal.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_quick_mode_runs_and_its_checks_pass(script, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    before = {p: p.stat().st_mtime_ns for p in (ROOT / "results").glob("*.json")}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick"], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=1500)
    report = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, report
    assert "FAILED" not in proc.stdout, report
    after = {p: p.stat().st_mtime_ns for p in (ROOT / "results").glob("*.json")}
    assert after == before  # quick mode leaves the committed results alone
    if script != "loss_memory.py":
        assert proc.stdout.count("[ok]") >= 3, report


def test_a_quick_check_that_fails_makes_the_script_fail(tmp_path):
    """The direction checks can fail: with an untrained teacher the teacher-beats-student check
    of the language-model experiment fails and the script exits 1."""
    import torch

    import distilkit as dk

    text = dk.load_text_corpus()
    tok = dk.CharTokenizer.from_texts([text])
    torch.manual_seed(0)
    fake = tmp_path / "untrained.safetensors"
    dk.save_model(dk.make_model("lm-teacher", len(tok), n_layers=1, d_model=32), fake, tok)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "lm_divergences.py"), "--quick",
                           "--steps", "10", "--teacher", str(fake), "--methods", "hard labels (10% text)",
                           "forward KL"], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[FAILED] the teacher beats the hard-label student" in proc.stdout
