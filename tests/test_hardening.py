"""distilkit never fails quietly: bad input gets a clear error (or a documented safe meaning),
the loss stays finite under bf16 autocast, the chunked loss has the gradients it claims, a
non-finite gradient stops training before it touches the weights, checkpoints are never
unpickled, and inputs longer than a model's maximum length give a clear error.

1. the bad-input table (``tests/_bad_inputs.py``; ``benchmarks/bad_inputs.py`` prints it);
2. numerics under ``torch.autocast("cpu", dtype=torch.bfloat16)`` and ``chunked_distillation_loss``;
3. NaN / inf gradients with a finite loss;
4. safe loading: a pickle in place of a checkpoint is refused and never executed;
5. long inputs: TransformerLM around ``max_len``, the LSTM seq2seq with a 500-token source.

(The divergences against float64 references, token means and masks are tested in
test_losses.py; they are not repeated here.)
"""

from __future__ import annotations

import ast
import math
import os
import pickle
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import distilkit as dk
from distilkit.experiments import shipped_checkpoints

torch.set_num_threads(1)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _bad_inputs import CASES, Context, MarkerPayload, run_case  # noqa: E402

PACKAGE_DIR = Path(dk.__file__).resolve().parent


# =============================================================================
# 1. bad input: one table, every row
# =============================================================================
@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    return Context(tmp_path_factory.mktemp("bad_inputs"))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, ctx):
    outcome = run_case(case, ctx)
    assert not outcome.problems, (
        f"{case.input}\n  got {outcome.kind}: {outcome.message}\n  problems: {outcome.problems}")


def test_cli_error_in_a_real_process(tmp_path):
    """The CLI rows call ``distilkit.cli.main`` in-process; this one runs the installed entry
    point for real: exit status 2, one clear line on stderr, no Traceback."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "distilkit", "generate", "--model",
                        "missing.safetensors", "--mr", "name : x"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    assert p.stderr.strip() == ("distilkit generate: error: --model missing.safetensors: no such file, "
                                "and no shipped checkpoint of that name (shipped: "
                                f"{', '.join(shipped_checkpoints())})")


def test_the_table_covers_the_brief():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 25
    for needed in ("loss-vocab-mismatch", "distill-vocab-mismatch", "loss-int-logits",
                   "loss-float-labels", "collate-seq2seq-empty", "batch-iterator-empty",
                   "loss-all-padding", "loss-nan-logits", "loss-posinf-logits", "loss-T-zero",
                   "loss-T-nan", "loss-T-inf", "loss-alpha-above-one", "loss-jsd-beta-one",
                   "loss-unknown-divergence", "unknown-preset", "unknown-decoding-method",
                   "unknown-device", "checkpoint-missing", "checkpoint-truncated",
                   "checkpoint-random-bytes", "checkpoint-foreign", "load-weights-other-config",
                   "tokenizer-malformed-json", "corpus-not-utf8", "distill-teacher-requires-grad",
                   "loss-devices-differ", "loss-labels-device", "lm-generate-past-max-len",
                   "lm-train-windows-past-max-len", "make-data-num-train-zero",
                   "cli-generate-missing-model", "cli-demo-temperature-zero",
                   "cli-distill-random-teacher"):
        assert needed in ids, needed
    for c in CASES:
        assert c.raises is None or c.patterns, f"{c.id}: an error row must check its message"


# =============================================================================
# 2a. numerics under bf16 autocast
# =============================================================================
VOCAB, MASKED = 12, [3, 10]  # vocabulary entries that both models mask with -inf


def _autocast_logits(regime: str, seed: int):
    """Student and teacher logits made *inside* CPU bf16 autocast by nn.Linear heads."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2, 5, 8, generator=g).requires_grad_()
    torch.manual_seed(seed)
    s_head, t_head = nn.Linear(8, VOCAB), nn.Linear(8, VOCAB)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s, t = s_head(hidden), t_head(hidden)
        assert s.dtype == torch.bfloat16 and t.dtype == torch.bfloat16
        if "huge" in regime:  # rescale so the extremes are exactly +-1e4 (still bf16)
            s = s / s.detach().abs().amax() * 1e4
            t = -t / t.detach().abs().amax() * 1e4
        if "masked" in regime:
            mask = torch.zeros(VOCAB, dtype=torch.bool)
            mask[MASKED] = True
            s, t = s.masked_fill(mask, -math.inf), t.masked_fill(mask, -math.inf)
    return hidden, s_head, t_head, s, t


@pytest.mark.parametrize("temperature", [0.05, 1.0, 100.0])
@pytest.mark.parametrize("divergence", dk.DIVERGENCES)
def test_loss_under_bf16_autocast_is_finite_with_finite_gradients(divergence, temperature):
    labels = torch.tensor([[0, 1, 2, 4, 5], [6, 7, 8, 9, -100]])  # never a masked entry
    kw = dict(temperature=temperature, alpha=0.5, divergence=divergence, beta=0.3)
    for regime in ("normal", "huge", "masked", "huge+masked"):
        for lab in (labels, None):
            hidden, s_head, t_head, s, t = _autocast_logits(regime, seed=len(regime))
            assert s.dtype == torch.bfloat16
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = dk.distillation_loss(s, t, lab, **kw)
            where = f"{divergence}, T={temperature}, {regime}, labels={lab is not None}"
            assert loss.dtype == torch.float32, where
            assert torch.isfinite(loss), f"{where}: loss {loss.item()}"
            loss.backward()
            for name, grad in [("student weight", s_head.weight.grad),
                               ("student bias", s_head.bias.grad), ("hidden", hidden.grad)]:
                assert grad is not None and torch.isfinite(grad).all(), f"{where}: {name} grad"
            assert t_head.weight.grad is None, f"{where}: gradient reached the teacher"
            # the same bf16 logits outside autocast give the same (float32) loss
            plain = dk.distillation_loss(s.detach(), t.detach(), lab, **kw)
            torch.testing.assert_close(loss.detach(), plain, rtol=1e-6, atol=1e-6)


# =============================================================================
# 2b. the chunked loss: gradcheck in float64 and equality with the full loss
# =============================================================================
def _chunk_inputs(with_labels: bool):
    g = torch.Generator().manual_seed(11)
    f64 = dict(dtype=torch.float64, generator=g)
    hs = torch.randn(7, 3, **f64).requires_grad_()
    ws = torch.randn(5, 3, **f64).requires_grad_()
    ht, wt = torch.randn(7, 4, **f64), torch.randn(5, 4, **f64)
    labels = None
    if with_labels:
        labels = torch.randint(0, 5, (7,), generator=g)
        labels[[1, 5]] = -100
    return hs, ws, ht, wt, labels


@pytest.mark.parametrize("with_labels", [True, False], ids=["labels", "no-labels"])
@pytest.mark.parametrize("divergence", dk.DIVERGENCES)
def test_chunked_loss_gradcheck_and_equality_with_full_loss(divergence, with_labels):
    hs, ws, ht, wt, labels = _chunk_inputs(with_labels)
    kw = dict(temperature=2.0, alpha=0.3, divergence=divergence, beta=0.3)
    for chunk in (2, 3):  # neither divides the 7 tokens
        fn = lambda h, w: dk.chunked_distillation_loss(h, w, ht, wt, labels, chunk_size=chunk, **kw)  # noqa: E731, B023
        assert torch.autograd.gradcheck(fn, (hs, ws), eps=1e-6, atol=1e-7, rtol=1e-5)
    full = dk.distillation_loss(hs @ ws.T, ht @ wt.T, labels, **kw)
    assert full.dtype == torch.float64
    g_full = torch.autograd.grad(full, (hs, ws))
    for chunk in (1, 2, 3, 4, 7, 100):
        got = dk.chunked_distillation_loss(hs, ws, ht, wt, labels, chunk_size=chunk, **kw)
        torch.testing.assert_close(got, full, rtol=1e-12, atol=1e-14)
        for a, b in zip(torch.autograd.grad(got, (hs, ws)), g_full):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


# =============================================================================
# 3. a NaN gradient with a finite loss stops training before the weights change
# =============================================================================
class _NaNGradLM(nn.Module):
    """A TransformerLM whose logits are finite but whose gradient is NaN: sqrt(0 * z) adds 0
    to every logit, and d sqrt(0 * z) / dz = 0 / (2 sqrt(0)) = NaN."""

    kind = "lm"

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inner = dk.TransformerLM(dk.TransformerConfig(vocab_size=10, d_model=16, n_layers=1,
                                                           n_heads=2, max_len=16))
        self.z = nn.Parameter(torch.ones(()))

    def forward(self, batch):
        return self.inner(batch) + torch.sqrt(self.z * 0.0)


@pytest.mark.parametrize("clip_norm", [1.0, None], ids=["clipped", "unclipped"])
@pytest.mark.parametrize("with_teacher", [False, True], ids=["hard-labels", "kd"])
def test_a_nan_gradient_stops_training_before_the_weights_change(tmp_path, clip_norm, with_teacher):
    model = _NaNGradLM()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    windows = [[1, 2, 3, 4, 5, 6], [2, 3, 4, 5, 6, 7]] * 4
    targets = None
    if with_teacher:
        torch.manual_seed(1)
        targets = dk.TeacherLogits(dk.TransformerLM(dk.TransformerConfig(
            vocab_size=10, d_model=16, n_layers=1, n_heads=2, max_len=16)))
    config = dk.TrainConfig(steps=3, batch_size=4, device="cpu", progress=False, warmup_steps=0,
                            clip_norm=clip_norm, checkpoint_dir=str(tmp_path), checkpoint_every=1)
    with pytest.raises(FloatingPointError) as info:
        dk.train(model, windows, config=config, targets=targets)
    message = str(info.value)
    assert "gradient" in message and "step 1" in message and "not updated" in message, message
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed although the step was refused"
    assert not list(tmp_path.iterdir()), "a checkpoint was written after a non-finite gradient"


def test_nan_logits_stop_training_before_the_weights_change():
    class NaNLM(_NaNGradLM):
        def forward(self, batch):
            return self.inner(batch) * (self.z * math.nan)

    windows = [[1, 2, 3, 4, 5, 6]] * 4
    for targets, exc, words in [(None, FloatingPointError, ["loss became nan", "step 0"]),
                                (dk.TeacherLogits(_NaNGradLM().inner), ValueError,
                                 ["student_logits", "NaN"])]:
        model = NaNLM()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(exc) as info:
            dk.train(model, windows, targets=targets, config=dk.TrainConfig(
                steps=2, batch_size=4, device="cpu", progress=False))
        assert all(w in str(info.value) for w in words), str(info.value)
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# =============================================================================
# 4. safe loading: never unpickle
# =============================================================================
def _pickle_bomb(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(MarkerPayload(str(marker))))
    return path


def test_marker_payload_really_runs_when_unpickled(tmp_path):
    """The payload is live: plain pickle.loads creates the marker (so its absence below means
    distilkit did not unpickle)."""
    marker = tmp_path / "marker"
    pickle.loads(_pickle_bomb(tmp_path / "x.pkl", marker).read_bytes())
    assert marker.exists()


def test_a_pickle_in_place_of_a_model_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "marker"
    bomb = _pickle_bomb(tmp_path / "model.safetensors", marker)
    torch_zip = tmp_path / "torch_save.safetensors"
    torch.save({"payload": MarkerPayload(str(marker))}, torch_zip)  # a torch.save() zip + pickle
    model = dk.make_model("d2t-tiny", 20)
    calls = [lambda p: dk.load_model(p), lambda p: dk.load_weights(model, p),
             lambda p: dk.experiments.load_teacher(path=p)]
    for path in (bomb, torch_zip):
        for call in calls:
            with pytest.raises(dk.CheckpointError) as info:
                call(path)
            message = str(info.value)
            assert path.name in message and "pickle, which distilkit never loads" in message
            assert not marker.exists(), "distilkit executed a pickle"


def _tiny_lm_run(checkpoint_dir, steps=6):
    torch.manual_seed(0)
    model = dk.TransformerLM(dk.TransformerConfig(vocab_size=10, d_model=16, n_layers=1,
                                                  n_heads=2, max_len=16))
    windows = [[i % 10, (i + 1) % 10, (i + 3) % 10, (i + 7) % 10, (i + 2) % 10] for i in range(12)]
    config = dk.TrainConfig(steps=steps, batch_size=4, device="cpu", progress=False, warmup_steps=1,
                            checkpoint_dir=None if checkpoint_dir is None else str(checkpoint_dir),
                            checkpoint_every=5)
    history = dk.train(model, windows, config=config)
    return model, history


def test_a_pickle_in_place_of_a_resume_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "marker"
    folder = tmp_path / "ckpt"
    _pickle_bomb(folder / "step-00000005.safetensors", marker)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, history = _tiny_lm_run(folder)
    assert not marker.exists(), "the training resume executed a pickle"
    messages = [str(w.message) for w in caught]
    assert any("step-00000005.safetensors" in m and "skipping unreadable checkpoint" in m
               and "pickle" in m for m in messages), messages
    # it trained from the start, exactly like a run without checkpoints
    ref_model, ref_history = _tiny_lm_run(None)
    assert history.step == list(range(1, 7)) and history.train_loss == ref_history.train_loss
    for (k, v), (_, w) in zip(model.state_dict().items(), ref_model.state_dict().items()):
        assert torch.equal(v, w), k
    # the bomb was replaced by a real checkpoint of step 5
    _, meta = dk.checkpoint.read_checkpoint(folder / "step-00000005.safetensors")
    assert meta["step"] == 5


def _package_sources():
    files = sorted(PACKAGE_DIR.rglob("*.py"))
    assert len(files) >= 10
    return files


def test_no_unpickling_anywhere_in_the_package_grep():
    bad = []
    for path in _package_sources():
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"\b(c?pickle|dill|joblib|marshal|shelve)\.(load|loads|Unpickler|open)\b", code):
                bad.append(f"{path.name}:{n}: {line.strip()}")
            if re.search(r"\btorch\.load\(", code) and "weights_only=True" not in code:
                bad.append(f"{path.name}:{n}: {line.strip()}")
            if re.search(r"allow_pickle\s*=\s*True", code):
                bad.append(f"{path.name}:{n}: {line.strip()}")
    assert not bad, "unpickling code in distilkit:\n" + "\n".join(bad)


def test_no_unpickling_anywhere_in_the_package_ast():
    """The same, on the syntax tree (catches `from pickle import load`, aliases, multi-line calls)."""
    bad = []
    for path in _package_sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in ("pickle", "cPickle", "dill", "joblib", "marshal", "shelve")
                       for n in names):
                    bad.append(f"{path.name}:{node.lineno}: imports {names}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr == "load" and isinstance(node.func.value, ast.Name) \
                    and node.func.value.id == "torch":
                ok = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant)
                         and k.value.value is True for k in node.keywords)
                if not ok:
                    bad.append(f"{path.name}:{node.lineno}: torch.load without weights_only=True")
    assert not bad, "\n".join(bad)


# =============================================================================
# 5. long inputs
# =============================================================================
@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_transformer_lengths_around_max_len_give_output_or_a_clear_error(method):
    torch.manual_seed(0)
    m = dk.TransformerLM(dk.TransformerConfig(vocab_size=10, d_model=16, n_layers=1, n_heads=2,
                                              max_len=12))
    for prompt in range(9, 15):
        for new in (1, 2, 3, 4):
            call = lambda: dk.generate(m, [[3] * prompt], method=method, max_new_tokens=new)  # noqa: E731, B023
            if prompt + new <= 12:
                out = call()[0]
                assert len(out) <= new
            else:
                with pytest.raises(ValueError, match=r"max_len 12") as info:
                    call()
                assert not isinstance(info.value, IndexError)
    # teacher forcing and evaluation on windows longer than max_len: ValueError, not IndexError
    with pytest.raises(ValueError, match=r"exceeds the model's max_len 12"):
        m(torch.ones(1, 13, dtype=torch.long))
    # the entry points check every example before any work, and name it
    for fn in (lambda: dk.evaluate_loss(m, [[1] * 5, [1] * 14]),
               lambda: dk.precompute_teacher_logits(m, [[1] * 5, [1] * 14], progress=False)):
        with pytest.raises(ValueError, match=r"examples\[1\] has 13 positions but the model reads at most 12"):
            fn()


def test_the_seq2seq_lstm_has_no_length_limit():
    """Documented in Seq2SeqLSTM: no maximum length. A 500-token source trains and decodes."""
    assert "no maximum length" in dk.Seq2SeqLSTM.__doc__.lower()
    torch.manual_seed(0)
    vocab = 30
    teacher, student = dk.make_model("d2t-tiny", vocab), dk.make_model("d2t-tiny", vocab)
    g = torch.Generator().manual_seed(0)
    src = (torch.randint(4, vocab, (500,), generator=g)).tolist()
    pairs = [(src, [5, 6, 7, 2]), (src[:250], [8, 9, 2]), (src[::-1], [7, 7, 7, 7, 2])]
    history = dk.distill(student, teacher, pairs, config=dk.TrainConfig(
        steps=2, batch_size=3, device="cpu", progress=False, warmup_steps=0))
    assert all(math.isfinite(x) for x in history.train_loss)
    for method in ("greedy", "beam", "sample"):
        out = dk.generate(student, [src, src[:300]], method=method, max_new_tokens=6)
        assert len(out) == 2 and all(len(o) <= 6 for o in out)
    assert math.isfinite(dk.evaluate_loss(student, pairs))
