"""A distillation run for tests/test_crash_resume.py, meant to be killed and restarted.

    python tests/_resume_worker.py --out RESULT.safetensors [--checkpoint-dir DIR] [--steps 40]
        [--checkpoint-every 5] [--delay 0.02] [--model lm|seq2seq] [--die-during-write-of STEP]

Word-level KD (``dk.train`` with ``dk.TeacherLogits``) of a tiny student (with dropout, so the
saved RNG state matters) from a tiny teacher, with gradient accumulation (so the saved data
position matters): ``--model lm`` (default, fast) a character TransformerLM on CPython's help
texts, ``--model seq2seq`` a Seq2SeqLSTM on a small data-to-text split. The same arguments always
describe the same run; with ``--checkpoint-dir`` a rerun resumes from the newest readable
checkpoint (``TrainConfig.resume=True``, the default).

* stdout: ``step N`` once per optimizer step *of a fresh run* (flushed), so a parent can kill
  the process at a chosen step; ``done`` at the end.
* at the end: RESULT.safetensors (the student's final state_dict) and RESULT.json with
  ``calls`` (teacher calls made by *this* process, i.e. micro-batches trained here), the
  History, and the step this process started from (``steps - calls / grad_accum``).
* ``--die-during-write-of STEP``: when the checkpoint of step STEP is being written, cut its
  temporary file to half its size and SIGKILL this process before the rename -- exactly what a
  power cut or an OOM kill in the middle of ``atomic_write_bytes`` leaves behind.

Also importable: :func:`run` does the same in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

import distilkit as dk  # noqa: E402
import distilkit.checkpoint as dk_checkpoint  # noqa: E402

GRAD_ACCUM = 2
BATCH_SIZE = 8


class SimulatedCrash(RuntimeError):
    """Raised by an in-process run to stop it in the middle of a step (see ``crash_after_calls``)."""


class _CountingTeacher(dk.TeacherLogits):
    """TeacherLogits that reports progress and can be slowed down (sleeping changes no number)."""

    def __init__(self, teacher, kd, delay: float, report: bool, crash_after_calls=None):
        super().__init__(teacher, kd)
        self.calls, self.delay, self.report = 0, delay, report
        self.crash_after_calls = crash_after_calls

    def __call__(self, batch, student):
        if self.crash_after_calls is not None and self.calls >= self.crash_after_calls:
            raise SimulatedCrash(f"simulated crash after {self.calls} teacher calls")
        self.calls += 1
        if self.report and self.calls % GRAD_ACCUM == 0:
            print(f"step {self.calls // GRAD_ACCUM}", flush=True)
        if self.delay:
            time.sleep(self.delay)
        return super().__call__(batch, student)


def _die_during_write(step: int) -> None:
    """Patch the checkpoint writer so that the write of ``step-<step>`` is cut off mid-way."""
    target = f"step-{step:08d}.safetensors"
    real_atomic, real_fsync = dk_checkpoint.atomic_write_bytes, os.fsync
    current = {"path": None}

    def atomic_write_bytes(path, data):
        current["path"] = Path(path)
        return real_atomic(path, data)

    def fsync(fd):
        path = current["path"]
        if path is not None and path.name == target and os.fstat(fd).st_size > 0:
            # the temporary file holds the whole checkpoint now; a crash "during the write"
            # leaves only a prefix of it on disk and never reaches os.replace
            os.ftruncate(fd, os.fstat(fd).st_size // 2)
            real_fsync(fd)
            print(f"dying during the write of {target}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return real_fsync(fd)

    dk_checkpoint.atomic_write_bytes = atomic_write_bytes
    os.fsync = fsync


def _setup(model: str):
    """(teacher, student, train examples, valid examples) -- the same every time."""
    torch.manual_seed(1234)
    if model == "lm":
        text = dk.load_text_corpus(max_chars=4000)  # CPython's help texts: no download
        tok = dk.CharTokenizer.from_texts([text])
        examples = dk.lm_examples(tok.encode(text), 24)
        cfg = dict(vocab_size=len(tok), d_model=32, n_layers=1, n_heads=2, max_len=32)
        teacher = dk.TransformerLM(dk.TransformerConfig(**cfg))
        student = dk.TransformerLM(dk.TransformerConfig(**cfg, dropout=0.1))
        return teacher, student, examples, examples[:8]
    if model == "seq2seq":
        data = dk.make_data_to_text(seed=3, num_train=64, num_transfer=0, num_valid=8, num_test=1,
                                    num_refs=1, num_teacher_train=0)
        vocab = len(data.tokenizer)
        teacher = dk.make_model("d2t-tiny", vocab)
        student = dk.make_model("d2t-tiny", vocab, dropout=0.2)
        return teacher, student, data.encode_pairs(data.train), data.encode_pairs(data.valid)
    raise ValueError(f"model must be 'lm' or 'seq2seq', got {model!r}")


def run(out, checkpoint_dir=None, steps: int = 40, checkpoint_every: int = 5, delay: float = 0.0,
        report: bool = False, seed: int = 0, model: str = "lm", crash_after_calls=None) -> dict:
    """Run (or resume) the distillation; write ``out`` and ``out.json``; return the JSON info.

    ``crash_after_calls``: raise :class:`SimulatedCrash` at the start of that teacher call + 1
    (in-process stand-in for a kill; nothing is written for the interrupted step)."""
    torch.set_num_threads(1)  # also when called in-process: one thread, bitwise reproducible
    # the student has dropout, so a resumed run must restore the RNG state to match
    teacher, student, train_examples, valid_examples = _setup(model)
    kd = dk.KDConfig(temperature=2.0, alpha=0.7, divergence="jsd", beta=0.4)
    targets = _CountingTeacher(teacher, kd, delay, report, crash_after_calls)
    config = dk.TrainConfig(steps=steps, batch_size=BATCH_SIZE, grad_accum=GRAD_ACCUM, lr=3e-3,
                            warmup_steps=4, eval_every=10, device="cpu", seed=seed,
                            checkpoint_dir=None if checkpoint_dir is None else str(checkpoint_dir),
                            checkpoint_every=checkpoint_every, keep_checkpoints=2, resume=True,
                            progress=False)
    history = dk.train(student, train_examples, config=config, targets=targets,
                       valid_examples=valid_examples)
    out = Path(out)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in student.state_dict().items()}, str(out))
    info = {"calls": targets.calls, "grad_accum": GRAD_ACCUM, "steps": steps,
            "started_from": steps - targets.calls // GRAD_ACCUM, "history": history.to_dict()}
    out.with_suffix(".json").write_text(json.dumps(info))
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--checkpoint-dir")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--checkpoint-every", type=int, default=5)
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", choices=["lm", "seq2seq"], default="lm")
    ap.add_argument("--die-during-write-of", type=int)
    args = ap.parse_args(argv)
    if args.die_during_write_of is not None:
        _die_during_write(args.die_during_write_of)
    run(args.out, args.checkpoint_dir, args.steps, args.checkpoint_every, args.delay, report=True,
        seed=args.seed, model=args.model)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
