"""One test per bug found by using the package as a user would. Each failed before its fix.

1. ``restore_best`` after a resume returned the last weights, not the best.
2. On-policy targets were normalised by the token count of the batch *before* it was replaced
   by student samples.
3. Tied weights crashed the first checkpoint; a Hugging Face config never compared equal after
   its JSON round trip, so resume refused.
4. ``generate`` with ids outside the vocabulary failed deep inside the model.
5. Every accumulated micro-batch was moved to the device at once.
6. ``TransformerLM`` fed several tokens on top of a non-empty KV cache attended with no causal
   mask.

Tiny models on the CPU throughout.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn as nn

torch.set_num_threads(1)

from distilkit import (  # noqa: E402
    IGNORE_INDEX,
    HardLabels,
    KDConfig,
    LMBatch,
    OnPolicyTargets,
    Seq2SeqConfig,
    Seq2SeqLSTM,
    TrainConfig,
    TransformerConfig,
    TransformerLM,
    collate_lm,
    distillation_loss,
    evaluate_loss,
    generate,
    train,
)

V = 13


def s2s(seed: int, **kw) -> Seq2SeqLSTM:
    torch.manual_seed(seed)
    return Seq2SeqLSTM(Seq2SeqConfig(vocab_size=V, embed_dim=16, hidden_dim=16, **kw))


def windows(n: int, seed: int, vocab: int = V):
    rng = random.Random(seed)
    return [[rng.randrange(1, vocab) for _ in range(rng.randint(3, 10))] for _ in range(n)]


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ============================================================================ 1. restore_best
def _diverging_data():
    """Train targets differ from validation targets: validation loss falls, then rises."""
    rng = random.Random(0)
    srcs = [[rng.randrange(4, V) for _ in range(3)] for _ in range(32)]
    return [(s, [5, 6, 7, 2]) for s in srcs], [(s, [8, 9, 10, 2]) for s in srcs[:8]]


class _StopAtStep(Exception):
    pass


class _HardLabelsUntil(HardLabels):
    """Hard labels that raise on their ``at``-th call (a crash in the middle of a run)."""

    def __init__(self, at: int):
        self.at, self.calls = at, 0

    def __call__(self, batch, student):
        self.calls += 1
        if self.calls == self.at:
            raise _StopAtStep()
        return super().__call__(batch, student)


def test_restore_best_after_a_resume_restores_the_best_weights(tmp_path):
    tr, va = _diverging_data()

    def config(**kw):
        base = dict(steps=12, batch_size=8, lr=1e-2, warmup_steps=0, clip_norm=None, eval_every=2,
                    checkpoint_dir=str(tmp_path), checkpoint_every=4, restore_best=True,
                    progress=False, device="cpu")
        return TrainConfig(**{**base, **kw})

    model = s2s(0)
    with pytest.raises(_StopAtStep):  # dies during step 10: the last checkpoint is step 8
        train(model, tr, config=config(), valid_examples=va, targets=_HardLabelsUntil(10))
    model = s2s(0)
    hist = train(model, tr, config=config(), valid_examples=va)
    best = min(hist.valid_loss)
    best_step = hist.valid_step[hist.valid_loss.index(best)]
    assert best_step <= 8, "the test needs the best evaluation before the resume"
    assert hist.valid_loss[-1] > best + 1e-3, "the test needs the last weights to be worse"
    assert evaluate_loss(model, va) == pytest.approx(best, abs=1e-6)
    # the same as an uninterrupted run
    straight = s2s(0)
    train(straight, tr, config=config(checkpoint_dir=None), valid_examples=va)
    for k, v in state(straight).items():
        assert torch.equal(v, model.state_dict()[k]), k
    # the best weights lie beside the step checkpoints, as a loadable model file
    names = sorted(p.name for p in tmp_path.iterdir())
    assert f"best-{best_step:08d}.safetensors" in names, names


def test_restore_best_when_the_run_is_already_complete(tmp_path):
    """A rerun of a finished run trains nothing and still ends on the best weights."""
    tr, va = _diverging_data()
    config = TrainConfig(steps=12, batch_size=8, lr=1e-2, warmup_steps=0, clip_norm=None, eval_every=2,
                         checkpoint_dir=str(tmp_path), checkpoint_every=4, restore_best=True,
                         progress=False, device="cpu")
    train(s2s(0), tr, config=config, valid_examples=va)
    again = s2s(5)
    hist = train(again, tr, config=config, valid_examples=va)
    assert evaluate_loss(again, va) == pytest.approx(min(hist.valid_loss), abs=1e-6)


# ============================================================================ 2. on-policy normalisation
class _Recording(nn.Module):
    """A frozen teacher that remembers every batch it scores (the batch after replacement)."""

    kind = "seq2seq"

    def __init__(self, inner: Seq2SeqLSTM):
        super().__init__()
        self.inner, self.config, self.seen = inner, inner.config, []

    def forward(self, batch):
        self.seen.append(batch)
        return self.inner(batch)


def test_on_policy_loss_is_normalised_by_the_tokens_scored():
    rng = random.Random(1)
    # long targets (10 tokens + eos), short samples (at most 2 tokens + eos): the counts differ
    pairs = [([rng.randrange(4, V) for _ in range(3)], [rng.randrange(4, V) for _ in range(10)] + [2])
             for _ in range(8)]
    student, teacher = s2s(0), _Recording(s2s(1))
    before = s2s(0)
    kd = KDConfig(alpha=1.0, divergence="reverse_kl")
    targets = OnPolicyTargets(teacher, kd, lam=1.0, max_new_tokens=2)
    hist = train(student, pairs, targets=targets, config=TrainConfig(
        steps=1, batch_size=8, lr=1e-2, warmup_steps=0, clip_norm=None, progress=False, device="cpu"))
    (scored,) = teacher.seen
    n_scored = int((scored.labels != IGNORE_INDEX).sum())
    assert n_scored < 8 * 11  # the samples really are shorter than the original targets
    with torch.no_grad():
        want = distillation_loss(before(scored), teacher.inner(scored), scored.labels, alpha=1.0,
                                 divergence="reverse_kl")  # token mean over the scored batch
    assert hist.train_loss[0] == pytest.approx(float(want), rel=1e-5)


# ============================================================================ 3. tied weights, HF config
class _GPT2(nn.Module):
    """A Hugging Face GPT-2 (tied input/output embeddings) behind distilkit's batch interface."""

    kind = "lm"

    def __init__(self, seed: int = 0):
        super().__init__()
        transformers = pytest.importorskip("transformers")
        torch.manual_seed(seed)
        self.hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32))
        self.config = self.hf.config

    def forward(self, batch: LMBatch) -> torch.Tensor:
        return self.hf(input_ids=batch.input_ids).logits


def test_tied_weights_and_hf_config_checkpoint_and_resume_bitwise(tmp_path):
    model = _GPT2()
    assert model.hf.lm_head.weight is model.hf.transformer.wte.weight  # tied
    data = windows(24, seed=2, vocab=50)

    def config(**kw):
        base = dict(steps=6, batch_size=8, lr=1e-2, warmup_steps=0, progress=False, device="cpu",
                    checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=2, seed=3)
        return TrainConfig(**{**base, **kw})

    straight = _GPT2()
    train(straight, data, config=config(resume=False, checkpoint_dir=None))
    with pytest.raises(_StopAtStep):
        train(model, data, config=config(), targets=_HardLabelsUntil(5))  # dies in step 5
    resumed = _GPT2(seed=9)  # other initial weights: everything must come from the checkpoint
    train(resumed, data, config=config())
    assert resumed.hf.lm_head.weight is resumed.hf.transformer.wte.weight  # still tied
    for k, v in state(straight).items():
        assert torch.equal(v, resumed.state_dict()[k]), k


# ============================================================================ 4. generate input ids
@pytest.mark.parametrize("bad", [V, 99, -1])
def test_generate_names_inputs_for_ids_outside_the_vocabulary(bad):
    torch.manual_seed(0)
    models = [s2s(0), TransformerLM(TransformerConfig(vocab_size=V, d_model=16, n_layers=1, n_heads=2,
                                                      max_len=32))]
    for model in models:
        for method in ("greedy", "beam", "sample"):
            with pytest.raises(ValueError) as info:
                generate(model, [[4, 5], [4, bad, 6]], method=method, max_new_tokens=3)
            message = str(info.value)
            assert "inputs[1][1]" in message and str(bad) in message and f"[0, {V})" in message, message


# ============================================================================ 5. one micro-batch at a time
def test_micro_batches_move_to_the_device_one_at_a_time():
    events = []

    class Batch(LMBatch):
        def to(self, device, **kw):
            events.append("to")
            return super().to(device, **kw)

    def collate(examples):
        b = collate_lm(examples)
        return Batch(b.input_ids, b.labels)

    class Model(TransformerLM):
        def forward(self, batch):
            events.append("forward")
            return super().forward(batch)

    torch.manual_seed(0)
    model = Model(TransformerConfig(vocab_size=V, d_model=16, n_layers=1, n_heads=2, max_len=32))
    train(model, windows(32, seed=4), collate=collate,
          config=TrainConfig(steps=2, batch_size=4, grad_accum=4, progress=False, device="cpu"))
    assert events == ["to", "forward"] * 8


# ============================================================================ 6. KV cache + several tokens
def test_chunked_prefill_on_a_cache_equals_a_full_forward_pass():
    torch.manual_seed(0)
    model = TransformerLM(TransformerConfig(vocab_size=V, d_model=16, n_layers=2, n_heads=2, max_len=32))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)  # large weights: attention differs a lot between positions
    model.eval()
    ids = torch.randint(0, V, (3, 14), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids)  # (3, 14, V)
        first, st = model.start(ids[:, :2].tolist())
        chunks = [first[:, None]]
        for i in range(2, 14, 3):  # chunks of 3 tokens (the last one 3 too: 2 + 4 * 3 = 14)
            logits, st = model.extend(st, ids[:, i : i + 3])
            chunks.append(logits)
        chunked = torch.cat(chunks, dim=1)
        # the one-token step path still equals it
        first, st = model.start(ids[:, :2].tolist())
        steps = [first[:, None]]
        for i in range(2, 14):
            logits, st = model.step(st, ids[:, i])
            steps.append(logits[:, None])
        stepped = torch.cat(steps, dim=1)
    assert chunked.shape == stepped.shape == (3, 13, V)
    torch.testing.assert_close(chunked, full[:, 1:], atol=1e-5, rtol=0)
    torch.testing.assert_close(stepped, full[:, 1:], atol=1e-5, rtol=0)
    assert st["length"] == 14
    assert not math.isclose(float((full[:, 5] - full[:, 6]).abs().max()), 0.0)
