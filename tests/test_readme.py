"""The README's Python snippets, run exactly as they stand (each in a fresh interpreter), and
checked against what the README says they do.

The quickstart is a real distillation run (about a minute and a half on one CPU core): it must print a
student BLEU of at least 50, the level of a student trained on the labelled pairs alone.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
# one thread: the README's test command runs two pytest workers on two cores, and a second
# thread per process would only oversubscribe them
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def python_blocks(section: str) -> list:
    """The ```python blocks of the README section whose heading starts with ``section``."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(section)}.*?(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, f"README.md has no section '## {section}'"
    return re.findall(r"^```python\n(.*?)^```", match.group(0), flags=re.M | re.S)


def run_snippet(code: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def test_readme_has_the_two_snippets():
    blocks = python_blocks("Quickstart")
    assert len(blocks) == 2
    quickstart = [line for line in blocks[0].splitlines() if line.strip()]
    assert len(quickstart) <= 12, "the quickstart should stay short"
    assert "dk.experiments.load_teacher()" in blocks[0]  # a real run with the shipped teacher


def test_quickstart_distils_a_useful_student(tmp_path):
    code = python_blocks("Quickstart")[0]
    start = time.perf_counter()
    r = run_snippet(code, tmp_path, timeout=3600)
    seconds = time.perf_counter() - start
    assert r.returncode == 0, r.stderr[-3000:]
    found = re.findall(r"student BLEU: ([0-9.]+)", r.stdout)
    assert len(found) == 1, r.stdout
    bleu = float(found[0])
    print(f"\nREADME quickstart: student BLEU {bleu:.1f}, {seconds:.0f} s wall")
    assert bleu >= 50, f"the quickstart's student reaches BLEU {bleu}, below the 400-pair baseline level"
    assert list(tmp_path.iterdir()) == []  # it writes nothing


def test_loss_snippet_prints_the_documented_loss(tmp_path):
    code = python_blocks("Quickstart")[1]
    r = run_snippet(code, tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    printed = float(re.fullmatch(r"loss: ([0-9.]+)\n", r.stdout).group(1))

    # the same tensors, and the loss the README describes written out by hand:
    # alpha * T^2 * KL(student_T || teacher_T) + (1 - alpha) * cross-entropy, mean over counted tokens
    torch.manual_seed(0)
    student_logits = torch.randn(4, 10, 50)
    teacher_logits = torch.randn(4, 10, 50)
    labels = torch.randint(0, 50, (4, 10))
    labels[:, 7:] = -100
    keep = labels != -100
    t, alpha = 2.0, 0.5
    log_q = torch.log_softmax(student_logits / t, -1)[keep]
    log_p = torch.log_softmax(teacher_logits / t, -1)[keep]
    reverse_kl = (log_q.exp() * (log_q - log_p)).sum(-1).mean()
    ce = -torch.log_softmax(student_logits, -1)[keep].gather(-1, labels[keep][:, None]).mean()
    expected = alpha * t * t * reverse_kl + (1 - alpha) * ce
    assert math.isfinite(printed)
    assert printed == pytest.approx(expected.item(), abs=2e-6)
