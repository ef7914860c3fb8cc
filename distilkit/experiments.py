"""The data-to-text experiment that ``distilkit demo`` runs and chapter 4 of the book explains.

A teacher trained on a large labelled set (``scripts/train_checkpoints.py``) is distilled
into a small student that has only a small labelled set plus *unlabelled* inputs (a transfer
set): the teacher writes the targets for the unlabelled inputs and supplies its next-token
distributions everywhere (word-level KD). The baseline is the same student architecture
trained on the labelled set alone, for the same number of steps. Both students keep their
final weights: early stopping on validation loss would pick the baseline's weights from
before it learns to copy attribute values (its loss rises while its outputs still improve).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Dict, List, Optional, Union

import torch
import torch.nn as nn

from .checkpoint import load_model
from .data import DataToTextData, make_data_to_text
from .metrics import bleu_and_ser, decoding_speed, perplexity
from .models import count_parameters, make_model
from .train import (
    CachedTeacherLogits,
    History,
    KDConfig,
    TrainConfig,
    precompute_teacher_logits,
    sequence_level_data,
    train,
)

__all__ = ["checkpoint_path", "load_teacher", "evaluate_d2t", "transfer_set", "DemoResult", "run_demo"]


def checkpoint_path(name: str) -> Path:
    """Path of a checkpoint shipped in ``distilkit/checkpoints`` (it may not exist)."""
    return Path(str(resources.files("distilkit") / "checkpoints" / f"{name}.safetensors"))


def load_teacher(name: str = "d2t-teacher", path: Optional[Union[str, Path]] = None,
                 device: Union[str, torch.device] = "cpu"):
    """Load a teacher checkpoint: ``(model, tokenizer, metadata)``.

    Raises ``FileNotFoundError`` with the command that makes it when it is missing.
    """
    path = Path(path) if path else checkpoint_path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"teacher checkpoint {path} not found; make it with `python scripts/train_checkpoints.py`"
        )
    return load_model(path, device)


def evaluate_d2t(model: nn.Module, data: DataToTextData, split: str = "test", speed_inputs: int = 20,
                 new_tokens: int = 30) -> Dict[str, object]:
    """Parameters, BLEU, slot error rate, perplexity (first reference) and batch-1 greedy tokens/s."""
    scores = bleu_and_ser(model, data, split)
    items = getattr(data, split)
    first = [(mr, refs[0] if isinstance(refs, list) else refs) for mr, refs in items]
    ppl = perplexity(model, data.encode_pairs(first))
    speed = decoding_speed(model, data.encode_inputs([mr for mr, _ in items[:speed_inputs]]), new_tokens)
    return {"params": count_parameters(model), "bleu": round(scores["bleu"], 2),
            "slot_error_rate": round(scores["slot_error_rate"], 4), "perplexity": round(ppl, 3),
            "tokens_per_s": round(speed, 1), "outputs": scores["outputs"]}


def transfer_set(teacher: nn.Module, data: DataToTextData, num_inputs: Optional[int] = None,
                 progress: bool = True) -> List[tuple]:
    """The teacher's greedy descriptions of the unlabelled ``data.transfer`` inputs, as
    (source, target) pairs."""
    mrs = data.transfer if num_inputs is None else data.transfer[:num_inputs]
    return sequence_level_data(teacher, data.encode_inputs(mrs), method="greedy", progress=progress)


@dataclass
class DemoResult:
    models: Dict[str, Dict[str, object]]
    histories: Dict[str, History] = field(default_factory=dict)
    setup: Dict[str, object] = field(default_factory=dict)

    def table(self) -> str:
        head = f"{'model':<10}{'params':>10}{'BLEU':>8}{'SER %':>8}{'ppl':>8}{'tok/s':>9}"
        rows = [head, "-" * len(head)]
        for name, m in self.models.items():
            rows.append(f"{name:<10}{m['params']:>10,}{m['bleu']:>8.2f}{100 * m['slot_error_rate']:>8.2f}"
                        f"{m['perplexity']:>8.3f}{m['tokens_per_s']:>9.1f}")
        return "\n".join(rows)

    def to_json(self) -> dict:
        strip = {k: {kk: vv for kk, vv in v.items() if kk != "outputs"} for k, v in self.models.items()}
        return {"models": strip, "setup": self.setup}


def run_demo(
    seed: int = 0,
    steps: int = 1200,
    num_transfer: int = 6000,
    kd: Optional[KDConfig] = None,
    student_preset: str = "d2t-student",
    teacher_path: Optional[Union[str, Path]] = None,
    device: str = "auto",
    progress: bool = True,
    log=print,
) -> DemoResult:
    """Teacher vs hard-label baseline vs distilled student on the data-to-text test split."""
    kd = kd or KDConfig(temperature=1.0, alpha=0.5)
    torch.manual_seed(seed)
    random.seed(seed)
    data = make_data_to_text(seed=0)
    teacher, tok, meta = load_teacher(path=teacher_path)
    if tok != data.tokenizer:
        raise ValueError("the teacher checkpoint's tokenizer differs from the task's; retrain the teacher")
    log(f"teacher: {count_parameters(teacher):,} parameters, trained on "
        f"{meta['extra'].get('info', {}).get('train_pairs', '?')} pairs")
    labelled = data.encode_pairs(data.train)
    valid = data.encode_pairs(data.valid)
    cfg = dict(steps=steps, batch_size=64, lr=3e-3, warmup_steps=50, eval_every=100, seed=seed,
               restore_best=False, progress=progress, device=device)

    log(f"baseline: {len(labelled)} labelled pairs, hard labels, {steps} steps")
    baseline = make_model(student_preset, len(data.tokenizer))
    h_base = train(baseline, labelled, config=TrainConfig(desc="baseline", **cfg), valid_examples=valid)

    log(f"student: {len(labelled)} labelled pairs + {num_transfer} teacher-labelled inputs, "
        f"word-level KD (T={kd.temperature}, alpha={kd.alpha}, {kd.divergence})")
    transfer = transfer_set(teacher, data, num_transfer, progress)
    cached = precompute_teacher_logits(teacher, labelled + transfer, progress=progress)
    student = make_model(student_preset, len(data.tokenizer))
    h_kd = train(student, cached, config=TrainConfig(desc="distil", **cfg), targets=CachedTeacherLogits(kd),
                 valid_examples=valid)

    log("evaluating on the test split ...")
    models = {name: evaluate_d2t(m.cpu(), data) for name, m in
              [("teacher", teacher.cpu()), ("baseline", baseline), ("student", student)]}
    setup = {"seed": seed, "steps": steps, "labelled_pairs": len(labelled), "transfer_inputs": num_transfer,
             "kd": {"temperature": kd.temperature, "alpha": kd.alpha, "divergence": kd.divergence},
             "student_preset": student_preset, "test_inputs": len(data.test),
             "references_per_input": len(data.test[0][1])}
    return DemoResult(models, {"baseline": h_base, "student": h_kd}, setup)
