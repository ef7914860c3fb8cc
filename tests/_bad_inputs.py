"""The bad-input table: one row per wrong thing a user can hand distilkit, with the error it
must give -- or, for the few inputs that have a documented safe meaning, the safe behaviour.

Shared by ``tests/test_hardening.py`` (which asserts every row) and ``benchmarks/bad_inputs.py``
(which prints "input -> first line of the message" for the docs). A row passes when

* the call raises exactly ``raises`` (a CLI row: exits with status 2),
* every regular expression in ``patterns`` occurs in the message (they name the argument and
  what was expected),
* the error is distilkit's own: the innermost frame of the traceback is inside the ``distilkit``
  package, not a deep torch / safetensors / json frame (a CLI row: stderr has no "Traceback"),
* and ``after`` (if given) holds, e.g. "no marker file was created".

A *safe* row (``raises=None``) must not raise; its ``call`` checks the safe behaviour itself
and returns a short description of it.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import re
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import torch

import distilkit as dk
from distilkit.checkpoint import write_checkpoint

PACKAGE_DIR = Path(dk.__file__).resolve().parent
V = 5  # vocabulary of the loss rows
CLI = "exit 2"


@dataclass
class Case:
    id: str
    input: str  # what was passed, in words (printed by benchmarks/bad_inputs.py)
    call: Callable  # call(ctx) -> None | str (safe rows) | CliRun (CLI rows)
    raises: object  # an exception type, CLI, or None for a safe row
    patterns: List[str] = field(default_factory=list)
    after: Optional[Callable] = None  # after(ctx) -> None, asserts


@dataclass
class Outcome:
    case: Case
    kind: str  # exception type name, "exit N", or "safe"
    message: str
    problems: List[str]

    @property
    def first_line(self) -> str:
        return self.message.strip().splitlines()[0] if self.message.strip() else ""


@dataclass
class CliRun:
    returncode: int
    stdout: str
    stderr: str


class Context:
    """Files and small models the rows need, made lazily in ``tmp``."""

    def __init__(self, tmp: Path):
        self.tmp = Path(tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._cache = {}

    def once(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    # -- models and data
    def lm(self, max_len: int = 16, vocab: int = 10) -> dk.TransformerLM:
        torch.manual_seed(0)
        return dk.TransformerLM(dk.TransformerConfig(vocab_size=vocab, d_model=16, n_layers=1,
                                                     n_heads=2, max_len=max_len))

    def s2s(self, vocab: int) -> dk.Seq2SeqLSTM:
        torch.manual_seed(0)
        return dk.make_model("d2t-tiny", vocab)

    def data(self):
        return self.once("data", lambda: dk.make_data_to_text(
            seed=1, num_train=16, num_transfer=0, num_valid=4, num_test=1, num_refs=1,
            num_teacher_train=0))

    def pairs(self):
        return self.data().encode_pairs(self.data().train)

    def vocab(self) -> int:
        return len(self.data().tokenizer)

    # -- files
    def file(self, name: str, data: bytes) -> Path:
        p = self.tmp / name
        p.write_bytes(data)
        return p

    def good_checkpoint(self) -> Path:
        def make():
            p = self.tmp / "good.safetensors"
            dk.save_model(self.s2s(20), p)
            return p
        return self.once("good", make)

    def pickle_checkpoint(self, name: str = "model.safetensors") -> Path:
        return self.file(name, pickle.dumps(MarkerPayload(str(self.marker))))

    @property
    def marker(self) -> Path:
        return self.tmp / "PWNED-marker"

    def cli(self, *argv: str) -> CliRun:
        """``distilkit ARGV`` -- the console script's ``main`` -- in this process, with stdout
        and stderr captured. An exception escaping ``main`` is what would print a Traceback,
        so it is recorded as one. (tests/test_hardening.py also runs a row in a real process.)"""
        from distilkit.cli import main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(argv))
            except SystemExit as exc:  # argparse
                code = exc.code if isinstance(exc.code, int) else 1
            except Exception:  # noqa: BLE001
                err.write(traceback.format_exc())
                code = 1
        return CliRun(code, out.getvalue(), err.getvalue())


class MarkerPayload:
    """A pickle whose loading would run code: it creates a marker file."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


# ============================================================================ helpers for rows
def _logits(*shape, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype).to(device)


def _labels(*shape, device="cpu"):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, V, shape, generator=g).to(device)


def _loss(student=None, teacher=None, labels="default", **kw):
    student = _logits(2, 3, V, seed=2) if student is None else student
    teacher = _logits(2, 3, V, seed=3) if teacher is None else teacher
    labels = _labels(2, 3) if isinstance(labels, str) else labels
    return dk.distillation_loss(student, teacher, labels, **kw)


def _with(value, index=-1):
    x = _logits(2, 3, V, seed=4)
    x.view(-1)[index] = value
    return x


def _cfg(**kw):
    return dk.TrainConfig(**{**dict(steps=2, batch_size=4, device="cpu", progress=False,
                                    warmup_steps=0), **kw})


def _all_padding(ctx):
    """Documented: a batch with no counted token gives loss 0 and a zero, finite gradient."""
    out = []
    for divergence in dk.DIVERGENCES:
        s = _logits(2, 3, V, seed=5).requires_grad_()
        loss = dk.distillation_loss(s, _logits(2, 3, V, seed=6), torch.full((2, 3), -100),
                                    divergence=divergence, temperature=2.0, alpha=0.5)
        loss.backward()
        assert loss.item() == 0.0, (divergence, loss.item())
        assert torch.isfinite(s.grad).all() and (s.grad == 0).all(), divergence
        out.append(divergence)
    return f"loss 0.0 and an all-zero finite gradient for all {len(out)} divergences"


def _all_padding_chunked(ctx):
    hs, ws = _logits(6, 4, seed=7).requires_grad_(), _logits(V, 4, seed=8).requires_grad_()
    loss = dk.chunked_distillation_loss(hs, ws, _logits(6, 3, seed=9), _logits(V, 3, seed=10),
                                        torch.full((6,), -100), chunk_size=4)
    loss.backward()
    assert loss.item() == 0.0
    assert (hs.grad == 0).all() and (ws.grad == 0).all()
    return "loss 0.0, zero gradients for the hidden states and the output weights"


def _teacher_with_grads(ctx):
    """Documented: the teacher is never updated, whatever its requires_grad says."""
    v = ctx.vocab()
    teacher, student = ctx.s2s(v), dk.make_model("d2t-tiny", v)
    teacher.train()
    assert all(p.requires_grad for p in teacher.parameters())
    before = {k: t.clone() for k, t in teacher.state_dict().items()}
    s_before = {k: t.clone() for k, t in student.state_dict().items()}
    dk.distill(student, teacher, ctx.pairs(), kd=dk.KDConfig(alpha=0.7), config=_cfg(steps=3))
    assert all(torch.equal(before[k], t) for k, t in teacher.state_dict().items()), "teacher moved"
    assert all(p.grad is None for p in teacher.parameters()), "teacher has gradients"
    assert any(not torch.equal(s_before[k], t) for k, t in student.state_dict().items())
    return "teacher weights bitwise unchanged, no .grad on any teacher parameter; student trained"


class _ForeignTeacher(torch.nn.Module):
    """A non-distilkit teacher (no .config) whose logits have another vocabulary size."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab, self.w = vocab, torch.nn.Parameter(torch.zeros(1))

    def forward(self, batch):
        return torch.zeros(*batch.labels.shape, self.vocab) + self.w


def _no_marker(ctx):
    assert not ctx.marker.exists(), "the pickle was executed!"


def _foreign_safetensors(ctx):
    from safetensors.torch import save_file

    p = ctx.tmp / "foreign.safetensors"
    save_file({"weight": torch.zeros(3, 3)}, str(p), metadata={"format": "pt"})
    return p


def _no_config_checkpoint(ctx):
    p = ctx.tmp / "noconfig.safetensors"
    write_checkpoint(p, {"model.w": torch.zeros(2)}, {"kind": "model"})
    return p


# ============================================================================ the table
INF, NAN = float("inf"), float("nan")
DIVS = [re.escape(d) for d in ("forward_kl", "reverse_kl", "jsd", "tvd")]

CASES: List[Case] = [
    # ------------------------------------------------------------------ the loss
    Case("loss-shape-mismatch", "distillation_loss(student (2,3,5), teacher (2,4,5))",
         lambda c: _loss(_logits(2, 3, V), _logits(2, 4, V)), ValueError,
         ["student_logits", "teacher_logits", r"\(2, 3, 5\)", r"\(2, 4, 5\)", "match"]),
    Case("loss-vocab-mismatch", "distillation_loss(student vocab 11, teacher vocab 13)",
         lambda c: _loss(_logits(2, 3, 11), _logits(2, 3, 13)), ValueError,
         ["student vocab", r"\b11\b", r"\b13\b", "shared vocabulary"]),
    Case("loss-int-logits", "distillation_loss(student_logits of dtype int64)",
         lambda c: _loss(torch.zeros(2, 3, V, dtype=torch.long)), TypeError,
         ["student_logits", "floating-point", "int64"]),
    Case("loss-float-labels", "distillation_loss(labels of dtype float32)",
         lambda c: _loss(labels=torch.zeros(2, 3)), TypeError, ["labels", "integer", "float32"]),
    Case("loss-labels-shape", "distillation_loss(labels (2,4) for logits (2,3,5))",
         lambda c: _loss(labels=torch.zeros(2, 4, dtype=torch.long)), ValueError,
         ["labels shape", r"\(2, 4\)", r"\(2, 3\)"]),
    Case("loss-label-out-of-vocab", "distillation_loss(labels containing id 7, vocab 5)",
         lambda c: _loss(labels=torch.tensor([[0, 1, 7], [2, 3, 4]])), ValueError,
         ["labels", r"\[0, 5\)", "ignore_index"]),
    Case("loss-nan-logits", "distillation_loss(student_logits with a NaN)",
         lambda c: _loss(_with(NAN)), ValueError, ["student_logits", "NaN"]),
    Case("loss-posinf-logits", "distillation_loss(teacher_logits with +inf)",
         lambda c: _loss(teacher=_with(INF)), ValueError, ["teacher_logits", r"\+inf", "-inf"]),
    Case("loss-T-zero", "distillation_loss(temperature=0)",
         lambda c: _loss(temperature=0), ValueError, ["temperature", "> 0", "got 0"]),
    Case("loss-T-negative", "distillation_loss(temperature=-2)",
         lambda c: _loss(temperature=-2), ValueError, ["temperature", "> 0", "-2"]),
    Case("loss-T-nan", "distillation_loss(temperature=nan)",
         lambda c: _loss(temperature=NAN), ValueError, ["temperature", "finite", "nan"]),
    Case("loss-T-inf", "distillation_loss(temperature=inf)",
         lambda c: _loss(temperature=INF), ValueError, ["temperature", "finite", "inf"]),
    Case("loss-T-string", "distillation_loss(temperature='2')",
         lambda c: _loss(temperature="2"), TypeError, ["temperature", "real number", "str"]),
    Case("loss-alpha-above-one", "distillation_loss(alpha=1.5)",
         lambda c: _loss(alpha=1.5), ValueError, ["alpha", r"\[0, 1\]", "1.5"]),
    Case("loss-alpha-negative", "distillation_loss(alpha=-0.1)",
         lambda c: _loss(alpha=-0.1), ValueError, ["alpha", r"\[0, 1\]", "-0.1"]),
    Case("loss-jsd-beta-one", "distillation_loss(divergence='jsd', beta=1.0)",
         lambda c: _loss(divergence="jsd", beta=1.0), ValueError, ["beta", "jsd", r"\(0, 1\)"]),
    Case("loss-skew-beta-negative", "distillation_loss(divergence='skew_reverse_kl', beta=-0.5)",
         lambda c: _loss(divergence="skew_reverse_kl", beta=-0.5), ValueError,
         ["beta", "skew_reverse_kl", r"\[0, 1\)"]),
    Case("loss-unknown-divergence", "distillation_loss(divergence='kl')",
         lambda c: _loss(divergence="kl"), ValueError, ["divergence", "'kl'", *DIVS]),
    Case("loss-unknown-reduction", "distillation_loss(reduction='batchmean')",
         lambda c: _loss(reduction="batchmean"), ValueError, ["reduction", "'mean'", "'sum'"]),
    Case("loss-devices-differ", "distillation_loss(student on cpu, teacher on meta)",
         lambda c: _loss(teacher=torch.empty(2, 3, V, device="meta")), ValueError,
         ["student_logits is on cpu", "teacher_logits is on meta", "same device"]),
    Case("loss-labels-device", "distillation_loss(logits on cpu, labels on meta)",
         lambda c: _loss(labels=torch.empty(2, 3, dtype=torch.long, device="meta")), ValueError,
         ["labels is on meta", "cpu", "same device"]),
    Case("loss-all-padding", "distillation_loss(labels all ignore_index) for every divergence",
         _all_padding, None),
    Case("chunked-vocab-mismatch", "chunked_distillation_loss(student W (5,4), teacher W (7,3))",
         lambda c: dk.chunked_distillation_loss(_logits(6, 4), _logits(V, 4), _logits(6, 3),
                                                _logits(7, 3)), ValueError,
         ["student vocab", r"\b5\b", r"\b7\b"]),
    Case("chunked-chunk-size-zero", "chunked_distillation_loss(chunk_size=0)",
         lambda c: dk.chunked_distillation_loss(_logits(6, 4), _logits(V, 4), _logits(6, 3),
                                                _logits(V, 3), chunk_size=0), ValueError,
         ["chunk_size", "positive"]),
    Case("chunked-all-padding", "chunked_distillation_loss(labels all ignore_index)",
         _all_padding_chunked, None),
    # ------------------------------------------------------------------ configs
    Case("kdconfig-T-zero", "KDConfig(temperature=0)",
         lambda c: dk.KDConfig(temperature=0), ValueError, ["temperature", "> 0"]),
    Case("kdconfig-alpha", "KDConfig(alpha=2)",
         lambda c: dk.KDConfig(alpha=2), ValueError, ["KDConfig.alpha", r"\[0, 1\]"]),
    Case("kdconfig-divergence", "KDConfig(divergence='kld')",
         lambda c: dk.KDConfig(divergence="kld"), ValueError, ["KDConfig.divergence", *DIVS]),
    Case("kdconfig-beta", "KDConfig(divergence='jsd', beta=0)",
         lambda c: dk.KDConfig(divergence="jsd", beta=0), ValueError, ["beta", r"\(0, 1\)"]),
    Case("trainconfig-steps", "TrainConfig(steps=0)",
         lambda c: dk.TrainConfig(steps=0), ValueError, ["TrainConfig.steps", "positive int"]),
    # ------------------------------------------------------------------ models and decoding
    Case("unknown-preset", "make_model('d2t-huge', 100)",
         lambda c: dk.make_model("d2t-huge", 100), ValueError,
         ["preset", "'d2t-huge'", "d2t-student", "lm-teacher"]),
    Case("lm-float-ids", "TransformerLM(float32 ids of shape (2, 3))",
         lambda c: c.lm()(torch.zeros(2, 3)), TypeError, ["token ids", "integer", "float32"]),
    Case("lm-1d-ids", "TransformerLM(1-D ids of shape (7,))",
         lambda c: c.lm()(torch.zeros(7, dtype=torch.long)), TypeError, ["LMBatch", r"\(batch, seq\)"]),
    Case("lm-id-out-of-vocab", "TransformerLM(ids containing 10, vocab 10)",
         lambda c: c.lm()(torch.tensor([[1, 10]])), ValueError, ["token ids", r"\[0, 10\)"]),
    Case("s2s-float-src", "Seq2SeqLSTM.encode(float32 source ids)",
         lambda c: c.s2s(20).encode(torch.ones(2, 3), torch.tensor([3, 3])), TypeError,
         ["src", "integer", "float32"]),
    Case("lm-generate-past-max-len", "greedy(TransformerLM max_len=16, prompt 10, max_new_tokens=7)",
         lambda c: dk.greedy(c.lm(16), [[1] * 10], max_new_tokens=7), ValueError,
         ["prompt length 10", "max_new_tokens 7", "max_len 16"]),
    Case("lm-prompt-past-max-len", "beam_search(TransformerLM max_len=16, prompt of 40 tokens)",
         lambda c: dk.beam_search(c.lm(16), [[1] * 40], max_new_tokens=1), ValueError,
         ["prompt length 40", "max_len 16"]),
    Case("lm-train-windows-past-max-len", "train(TransformerLM max_len=16, windows of 40 tokens)",
         lambda c: dk.train(c.lm(16), [[1] * 41] * 4, config=_cfg()), ValueError,
         ["has 40 positions", "at most 16", "max_length="]),
    Case("unknown-decoding-method", "generate(model, inputs, method='nucleus')",
         lambda c: dk.generate(c.lm(), [[1]], method="nucleus", max_new_tokens=3), ValueError,
         ["method", "'nucleus'", "greedy", "beam", "sample"]),
    Case("sample-temperature-zero", "sample(model, inputs, temperature=0)",
         lambda c: dk.sample(c.lm(), [[1]], max_new_tokens=3, temperature=0), ValueError, ["temperature", "> 0"]),
    Case("beam-size-zero", "beam_search(model, inputs, beam_size=0)",
         lambda c: dk.beam_search(c.lm(), [[1]], max_new_tokens=3, beam_size=0), ValueError,
         ["beam_size", "positive int"]),
    Case("unknown-device", "resolve_device('tpu')",
         lambda c: dk.resolve_device("tpu"), ValueError, ["device", "'tpu'", "'cpu'", "'cuda'"]),
    Case("train-unknown-device", "train(..., TrainConfig(device='gpu0'))",
         lambda c: dk.train(c.lm(), [[1, 2, 3]] * 4, config=_cfg(device="gpu0")), ValueError,
         ["device", "'gpu0'", "'cpu'"]),
    # ------------------------------------------------------------------ data
    Case("collate-seq2seq-empty", "collate_seq2seq([])",
         lambda c: dk.collate_seq2seq([]), ValueError, ["examples", "empty"]),
    Case("collate-lm-empty", "collate_lm([])",
         lambda c: dk.collate_lm([]), ValueError, ["examples", "empty"]),
    Case("batch-iterator-empty", "BatchIterator([], 4, collate_seq2seq)",
         lambda c: dk.BatchIterator([], 4, dk.collate_seq2seq), ValueError, ["examples", "empty"]),
    Case("make-data-num-train-zero", "make_data_to_text(num_train=0)",
         lambda c: dk.make_data_to_text(num_train=0), ValueError, ["num_train", "positive int", "0"]),
    Case("tokenizer-malformed-json", "load_tokenizer(file containing '{\"kind\": \"word\", ')",
         lambda c: dk.load_tokenizer(c.file("tok.json", b'{"kind": "word", ')), ValueError,
         ["tokenizer file", "tok.json", "not valid JSON"]),
    Case("tokenizer-tokens-not-a-list", "load_tokenizer(file containing {\"kind\": \"word\", \"tokens\": 5})",
         lambda c: dk.load_tokenizer(c.file("tok2.json", b'{"kind": "word", "tokens": 5}')), ValueError,
         ["tok2.json", "'tokens'", "list of strings"]),
    Case("corpus-not-utf8", "load_text_corpus(file with bytes 0xff 0xfe)",
         lambda c: dk.load_text_corpus(c.file("corpus.txt", b"some text \xff\xfe more")), ValueError,
         ["corpus file", "corpus.txt", "UTF-8"]),
    Case("corpus-missing", "load_text_corpus('missing.txt')",
         lambda c: dk.load_text_corpus(c.tmp / "missing.txt"), FileNotFoundError,
         ["corpus path", "missing.txt", "not a file"]),
    # ------------------------------------------------------------------ checkpoints
    Case("checkpoint-missing", "load_model('missing.safetensors')",
         lambda c: dk.load_model(c.tmp / "missing.safetensors"), dk.CheckpointError,
         ["checkpoint not found", "missing.safetensors"]),
    Case("checkpoint-truncated", "load_model(first half of a valid checkpoint)",
         lambda c: dk.load_model(c.file("trunc.safetensors",
                                        c.good_checkpoint().read_bytes()[:3000])), dk.CheckpointError,
         ["trunc.safetensors", "not a readable distilkit checkpoint", "truncated"]),
    Case("checkpoint-random-bytes", "load_model(4 KiB of random bytes)",
         lambda c: dk.load_model(c.file("random.safetensors", os.urandom(4096))), dk.CheckpointError,
         ["random.safetensors", "not a readable distilkit checkpoint", "safetensors"]),
    Case("checkpoint-foreign", "load_model(a valid safetensors file from another library)",
         lambda c: dk.load_model(_foreign_safetensors(c)), dk.CheckpointError,
         ["foreign.safetensors", "not a distilkit checkpoint", "distilkit-v1"]),
    Case("checkpoint-pickle", "load_model(a pickle whose __reduce__ creates a file)",
         lambda c: dk.load_model(c.pickle_checkpoint()), dk.CheckpointError,
         ["model.safetensors", "pickle", "never loads"], after=_no_marker),
    Case("checkpoint-without-config", "load_model(a distilkit checkpoint with no model config)",
         lambda c: dk.load_model(_no_config_checkpoint(c)), dk.CheckpointError,
         ["noconfig.safetensors", "without a model config"]),
    Case("load-weights-other-config", "load_weights(d2t-tiny vocab 21, checkpoint of vocab 20)",
         lambda c: dk.load_weights(c.s2s(21), c.good_checkpoint()), dk.CheckpointError,
         ["different model config", "vocab_size: checkpoint 20, model 21"]),
    # ------------------------------------------------------------------ training and distillation
    Case("distill-vocab-mismatch", "distill(student vocab V, teacher vocab V+3)",
         lambda c: dk.distill(dk.make_model("d2t-tiny", c.vocab()), c.s2s(c.vocab() + 3), c.pairs(),
                              config=_cfg()), ValueError,
         ["student vocab size", "teacher vocab size", "shared tokenizer"]),
    Case("train-teacherlogits-vocab-mismatch", "train(targets=TeacherLogits(teacher of vocab V+3))",
         lambda c: dk.train(dk.make_model("d2t-tiny", c.vocab()), c.pairs(), config=_cfg(),
                            targets=dk.TeacherLogits(c.s2s(c.vocab() + 3))), ValueError,
         ["student vocab size", "teacher vocab size"]),
    Case("distill-foreign-teacher-vocab", "distill(student vocab V, a plain nn.Module teacher of vocab V+2)",
         lambda c: dk.distill(dk.make_model("d2t-tiny", c.vocab()), _ForeignTeacher(c.vocab() + 2),
                              c.pairs(), config=_cfg()), ValueError,
         ["student vocab size", "teacher vocab size", "shared vocabulary"]),
    Case("distill-teacher-is-student", "distill(model, model, ...)",
         lambda c: (lambda m: dk.distill(m, m, c.pairs(), config=_cfg()))(c.s2s(c.vocab())),
         ValueError, ["teacher and student", "different"]),
    Case("train-empty-examples", "train(model, [])",
         lambda c: dk.train(c.lm(), [], config=_cfg()), ValueError, ["train_examples", "empty"]),
    Case("distill-teacher-requires-grad", "distill(student, teacher with requires_grad=True, in train mode)",
         _teacher_with_grads, None),
    # ------------------------------------------------------------------ the command line
    Case("cli-generate-missing-model", "distilkit generate --model missing.safetensors --mr 'name : x'",
         lambda c: c.cli("generate", "--model", str(c.tmp / "missing.safetensors"), "--mr", "name : x"), CLI,
         ["distilkit generate: error", "--model", "missing.safetensors", "no such file",
          "shipped: ", "d2t-teacher"]),
    Case("cli-demo-temperature-zero", "distilkit demo --temperature 0",
         lambda c: c.cli("demo", "--temperature", "0", "--steps", "1"), CLI,
         ["distilkit demo: error", "temperature", "> 0"]),
    Case("cli-distill-random-teacher", "distilkit distill --teacher <4 KiB of random bytes>",
         lambda c: c.cli("distill", "--teacher", str(c.file("teacher.safetensors", os.urandom(4096))),
                         "--out", str(c.tmp / "student.safetensors"), "--steps", "1"), CLI,
         ["distilkit distill: error", "teacher.safetensors", "not a readable distilkit checkpoint"]),
    Case("cli-distill-unknown-divergence", "distilkit distill --teacher t --out s --divergence kl",
         lambda c: c.cli("distill", "--teacher", str(c.tmp / "t"), "--out", str(c.tmp / "s"),
                         "--divergence", "kl"), CLI,
         ["--divergence", "invalid choice", "'kl'", "forward_kl"]),
    Case("cli-train-unknown-device", "distilkit train --out m.safetensors --device tpu",
         lambda c: c.cli("train", "--out", str(c.tmp / "m.safetensors"), "--device", "tpu", "--steps", "1"),
         CLI,
         ["distilkit train: error", "--device", "'tpu'"]),
]


# ============================================================================ running a row
def _innermost_frame(exc: BaseException):
    return traceback.extract_tb(exc.__traceback__)[-1]


def run_case(case: Case, ctx: Context) -> Outcome:
    problems: List[str] = []
    kind, message = "safe", ""
    try:
        result = case.call(ctx)
    except Exception as exc:  # noqa: BLE001 - the table records whatever happened
        kind, message = type(exc).__name__, str(exc)
        if case.raises is None or case.raises == CLI:
            problems.append(f"expected no exception, got {kind}: {message}")
        elif type(exc) is not case.raises:
            problems.append(f"expected {case.raises.__name__}, got {kind}")
        frame = _innermost_frame(exc)
        if PACKAGE_DIR not in Path(frame.filename).resolve().parents:
            problems.append(f"raised deep inside {frame.filename}:{frame.lineno}, not by distilkit")
    else:
        if case.raises == CLI:
            kind, message = f"exit {result.returncode}", result.stderr
            if result.returncode != 2:
                problems.append(f"expected exit status 2, got {result.returncode}")
            if "Traceback" in result.stderr:
                problems.append("stderr has a Traceback")
        elif case.raises is not None:
            problems.append(f"expected {case.raises.__name__}, nothing was raised")
        else:
            message = str(result)
    if case.raises is not None:
        for pattern in case.patterns:
            if not re.search(pattern, message):
                problems.append(f"{pattern!r} not in the message")
    if case.after is not None:
        try:
            case.after(ctx)
        except AssertionError as exc:
            problems.append(f"after-check failed: {exc}")
    if case.raises == CLI:  # argparse prints usage first; quote the error line
        errors = [ln for ln in message.splitlines() if "error:" in ln]
        message = "\n".join(errors) if errors else message
    return Outcome(case, kind, message, problems)


def run_cases(cases: List[Case], ctx: Context) -> List[Outcome]:
    return [run_case(c, ctx) for c in cases]
