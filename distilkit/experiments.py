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
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Dict, List, Optional, Union

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .checkpoint import load_model
from .data import DataToTextData, make_data_to_text
from .decoding import greedy
from .metrics import corpus_bleu, decoding_speed, perplexity, repeated_ngram_rate, slot_error_rate
from .models import count_parameters, make_model
from .training import (
    CachedTeacherLogits,
    History,
    KDConfig,
    TrainConfig,
    precompute_teacher_logits,
    sequence_level_data,
    train,
)

__all__ = ["checkpoint_path", "shipped_checkpoints", "load_teacher", "evaluate_d2t", "transfer_set",
           "DemoResult", "run_demo", "D2T_ROLES", "d2t_lm_tokenizer", "d2t_lm_prompt", "d2t_lm_pairs",
           "d2t_lm_decode", "evaluate_d2t_lm", "LEGEND", "percent_ser"]


def checkpoint_path(name: str) -> Path:
    """Path of a checkpoint shipped in ``distilkit/checkpoints`` (it may not exist)."""
    return Path(str(resources.files("distilkit") / "checkpoints" / f"{name}.safetensors"))


_MADE_BY_SCRIPTS = ("d2t-teacher", "d2t-lm-teacher", "lm-teacher")  # what scripts/train_checkpoints.py makes


def shipped_checkpoints() -> List[str]:
    """Names of the checkpoints shipped in ``distilkit/checkpoints`` (e.g. ``["d2t-teacher"]``),
    which :func:`load_teacher` and the command line (``--model d2t-teacher``) accept."""
    folder = checkpoint_path("x").parent
    return sorted(p.name[: -len(".safetensors")] for p in folder.glob("*.safetensors")) if folder.is_dir() else []


def load_teacher(name: str = "d2t-teacher", path: Optional[Union[str, Path]] = None,
                 device: Union[str, torch.device] = "cpu"):
    """Load a teacher checkpoint: ``(model, tokenizer, metadata)``, the shipped one called
    ``name`` (see :func:`shipped_checkpoints`) or the file at ``path``.

    Raises ``FileNotFoundError`` naming the shipped checkpoints for an unknown ``name``, and
    with the command that makes it when a shipped checkpoint is missing.
    """
    if not path and name not in shipped_checkpoints() and name not in _MADE_BY_SCRIPTS:
        raise FileNotFoundError(f"no shipped checkpoint named {name!r}; shipped: "
                                f"{', '.join(shipped_checkpoints()) or 'none'} (or pass path=...)")
    path = Path(path) if path else checkpoint_path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"teacher checkpoint {path} not found; make it with `python scripts/train_checkpoints.py`"
        )
    return load_model(path, device)


def evaluate_d2t(model: nn.Module, data: DataToTextData, split: str = "test", speed_inputs: int = 20,
                 new_tokens: int = 30, progress: bool = False, batch_size: int = 200) -> Dict[str, object]:
    """Parameters, BLEU, slot error rate, repeated 4-gram rate (% of outputs that say a clause
    twice), perplexity (first reference) and batch-1 greedy tokens/s.

    The split is decoded greedily in batches of ``batch_size`` inputs (as
    :func:`distilkit.metrics.bleu_and_ser` does); the speed is measured on its first
    ``speed_inputs`` inputs, one at a time. ``progress=True`` shows a bar on stderr over both."""
    items = getattr(data, split)
    mrs = [mr for mr, _ in items]
    refs = [r if isinstance(r, list) else [r] for _, r in items]
    inputs = data.encode_inputs(mrs)
    speed_items = inputs[:speed_inputs]
    if not speed_items:
        raise ValueError(f"speed_inputs must be a positive int, got {speed_inputs!r}")
    with tqdm(total=len(inputs) + len(speed_items), desc=f"evaluate ({split})", unit="input",
              disable=not progress, file=sys.stderr) as bar:
        bar.set_postfix_str("decoding")
        outs: List[str] = []
        for i in range(0, len(inputs), batch_size):
            chunk = inputs[i : i + batch_size]
            outs.extend(data.tokenizer.decode(ids) for ids in greedy(model, chunk, max_new_tokens=80))
            bar.update(len(chunk))
        bar.set_postfix_str("perplexity")
        ppl = perplexity(model, data.encode_pairs([(mr, r[0]) for mr, r in zip(mrs, refs)], unknown="error"))
        bar.set_postfix_str("speed")
        seconds = 0.0  # decoding_speed times exactly new_tokens tokens per input, after a warm-up
        for x in speed_items:
            seconds += new_tokens / decoding_speed(model, [x], new_tokens)
            bar.update(1)
    return {"params": count_parameters(model), "bleu": round(corpus_bleu(outs, refs), 2),
            "slot_error_rate": round(slot_error_rate(mrs, outs), 4),
            "repeated_4gram_pct": round(repeated_ngram_rate(outs), 2), "perplexity": round(ppl, 3),
            "tokens_per_s": round(len(speed_items) * new_tokens / seconds, 1), "outputs": outs}


def transfer_set(teacher: nn.Module, data: DataToTextData, num_inputs: Optional[int] = None,
                 progress: bool = True) -> List[tuple]:
    """The teacher's greedy descriptions of the unlabelled ``data.transfer`` inputs, as
    (source, target) pairs."""
    mrs = data.transfer if num_inputs is None else data.transfer[:num_inputs]
    return sequence_level_data(teacher, data.encode_inputs(mrs), method="greedy", progress=progress)


# ---------------------------------------------------------------- data-to-text, decoder-only
D2T_ROLES = ("user", "assistant")  # the chat turn's role words


def d2t_lm_tokenizer(data: DataToTextData):
    """The task's word tokenizer extended by the role words it lacks (appended, so every id of
    the task's own tokenizer keeps its meaning). The causal teacher's checkpoint stores it."""
    from .data import WordTokenizer

    tok = data.tokenizer
    return WordTokenizer(list(tok.itos) + [w for w in D2T_ROLES if w not in tok.stoi])


def d2t_lm_prompt(tokenizer, mr: Dict[str, str]) -> List[int]:
    """The prompt of one chat turn: ``user : <linearized MR> assistant :``."""
    from .data import linearize_mr

    return tokenizer.encode(f"{D2T_ROLES[0]} : {linearize_mr(mr)} {D2T_ROLES[1]} :", unknown="error")


def d2t_lm_pairs(tokenizer, pairs) -> List[tuple]:
    """``(prompt_ids, completion_ids)`` per (mr, text) pair: the completion is the description
    followed by ``<eos>``; only it is scored when a causal LM trains on the pairs."""
    out = []
    for i, (mr, text) in enumerate(pairs):
        try:
            out.append((d2t_lm_prompt(tokenizer, mr), tokenizer.encode(text, add_eos=True, unknown="error")))
        except ValueError as exc:
            raise ValueError(f"pairs[{i}]: {exc}") from None
    return out


def d2t_lm_decode(model: nn.Module, tokenizer, mrs, max_new_tokens: int = 80, batch_size: int = 200) -> List[str]:
    """Greedy completions of the prompts of ``mrs``, as text (prompts grouped by length, since
    a :class:`~distilkit.models.TransformerLM` decodes equal-length prompts together)."""
    prompts = [d2t_lm_prompt(tokenizer, mr) for mr in mrs]
    outs: List[Optional[str]] = [None] * len(prompts)
    by_len: Dict[int, List[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    for idx in by_len.values():
        for j in range(0, len(idx), batch_size):
            chunk = idx[j : j + batch_size]
            for i, ids in zip(chunk, greedy(model, [prompts[i] for i in chunk], max_new_tokens=max_new_tokens)):
                outs[i] = tokenizer.decode(ids)
    return outs  # type: ignore[return-value]


def evaluate_d2t_lm(model: nn.Module, tokenizer, items, max_new_tokens: int = 80) -> Dict[str, object]:
    """The causal equivalent of :func:`distilkit.metrics.bleu_and_ser`: decode the completion
    after each prompt and score it -- ``{"bleu", "slot_error_rate", "outputs"}``, BLEU against
    all references of each item (``items``: (mr, references or one reference) pairs)."""
    mrs = [mr for mr, _ in items]
    refs = [r if isinstance(r, list) else [r] for _, r in items]
    outs = d2t_lm_decode(model, tokenizer, mrs, max_new_tokens=max_new_tokens)
    return {"bleu": corpus_bleu(outs, refs), "slot_error_rate": slot_error_rate(mrs, outs), "outputs": outs}


@dataclass
class DemoResult:
    models: Dict[str, Dict[str, object]]
    histories: Dict[str, History] = field(default_factory=dict)
    setup: Dict[str, object] = field(default_factory=dict)

    def table(self) -> str:
        """The three models side by side, followed by :data:`LEGEND` (what each column means)."""
        head = f"{'model':<10}{'params':>10}{'BLEU':>8}{'SER %':>8}{'rep %':>7}{'ppl':>8}{'tok/s':>9}"
        rows = [head, "-" * len(head)]
        for name, m in self.models.items():
            rows.append(f"{name:<10}{m['params']:>10,}{m['bleu']:>8.2f}{100 * m['slot_error_rate']:>8.2f}"
                        f"{m['repeated_4gram_pct']:>7.1f}{m['perplexity']:>8.3f}{m['tokens_per_s']:>9.1f}")
        return "\n".join(rows + [""] + LEGEND)

    def to_json(self) -> dict:
        """The figures without the outputs; the slot error rate in percent (``slot_error_rate_pct``),
        as the table and ``distilkit evaluate`` print it."""
        strip = {k: percent_ser({kk: vv for kk, vv in v.items() if kk != "outputs"}) for k, v in self.models.items()}
        return {"models": strip, "setup": self.setup}


#: what the columns of :meth:`DemoResult.table` mean
LEGEND = [
    "BLEU: n-gram overlap with the 8 references of each test input, 0-100, higher is better",
    "SER %: slot error rate, attribute values missing, wrong or added per 100 attributes of the inputs, "
    "lower is better",
    "rep %: outputs that say a four-word phrase twice (a repeated clause), per 100 outputs; "
    "0.4 for the references",
    "ppl: perplexity of the first reference under the model (teacher forcing), lower is better",
    "tok/s: greedy decoding speed, one input at a time, tokens per second on this machine",
]


def percent_ser(scores: Dict[str, object]) -> Dict[str, object]:
    """``scores`` with ``slot_error_rate`` (a fraction) replaced by ``slot_error_rate_pct`` (percent,
    two decimals): the one unit of the command line's output."""
    out = {k: v for k, v in scores.items() if k != "slot_error_rate"}
    if "slot_error_rate" in scores:
        out["slot_error_rate_pct"] = round(100 * float(scores["slot_error_rate"]), 2)
    return out


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
    targets = CachedTeacherLogits(kd)  # kd=None: the targets' own default settings
    kd = targets.kd
    torch.manual_seed(seed)
    random.seed(seed)
    data = make_data_to_text(seed=0)
    teacher, tok, meta = load_teacher(path=teacher_path)
    if tok != data.tokenizer:
        raise ValueError("the teacher checkpoint's tokenizer differs from the task's; retrain the teacher")
    log(f"teacher: {count_parameters(teacher):,} parameters, trained on "
        f"{meta['extra'].get('info', {}).get('train_pairs', '?')} pairs")
    labelled = data.encode_pairs(data.train, unknown="error")
    valid = data.encode_pairs(data.valid, unknown="error")
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
    h_kd = train(student, cached, config=TrainConfig(desc="distil", **cfg), targets=targets,
                 valid_examples=valid)

    log("evaluating on the test split ...")
    models = {name: evaluate_d2t(m.cpu(), data) for name, m in
              [("teacher", teacher.cpu()), ("baseline", baseline), ("student", student)]}
    setup = {"seed": seed, "steps": steps, "batch_size": cfg["batch_size"], "labelled_pairs": len(labelled),
             "transfer_inputs": num_transfer,
             "kd": {"temperature": kd.temperature, "alpha": kd.alpha, "divergence": kd.divergence},
             "student_preset": student_preset, "test_inputs": len(data.test),
             "references_per_input": len(data.test[0][1])}
    return DemoResult(models, {"baseline": h_base, "student": h_kd}, setup)
