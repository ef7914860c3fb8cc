"""Causal LMs on (prompt, completion) pairs, and examples longer than the model can read.

Called as a user calls the package: ``dk.train`` / ``dk.distill`` / ``dk.precompute_teacher_logits``
/ ``dk.cache_teacher_logits`` with lists of pairs, for distilkit's ``TransformerLM`` and a Hugging
Face GPT-2."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import distilkit as dk
from distilkit.adapters import adapt
from distilkit.training import kd_loss

torch.set_num_threads(1)
V = 17


def lm(seed=0, d=16, max_len=64):
    torch.manual_seed(seed)
    return dk.make_model("lm-student", V, d_model=d, n_heads=2, max_len=max_len)


def hf_lm(seed=0, width=16, positions=64):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=V, n_positions=positions, n_embd=width, n_layer=1, n_head=2, bos_token_id=2,
        eos_token_id=2, pad_token_id=0))


def pairs(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        p, c = (int(x) for x in torch.randint(1, 8, (2,), generator=g))
        out.append((torch.randint(3, V, (p,), generator=g).tolist(), torch.randint(3, V, (c,), generator=g).tolist()))
    return out


@pytest.mark.parametrize("make", [lm, hf_lm], ids=["TransformerLM", "gpt2"])
def test_loss_on_a_pair_is_the_loss_of_its_completion_positions(make):
    student, teacher = make(0), make(1, width=24) if make is hf_lm else make(1, d=24)
    student.eval(), teacher.eval()  # no dropout: the two computations must see the same network
    ex = pairs(6)
    s_ad, t_ad = adapt(student), adapt(teacher)
    batch = s_ad.collate(ex)
    s_logits, t_logits = s_ad.logits(batch), t_ad.logits(batch)
    kd = dk.KDConfig(temperature=2.0, alpha=0.3, divergence="reverse_kl")
    got_kd = kd_loss(s_logits, t_logits, batch.labels, kd)
    got_ce = kd_loss(s_logits, None, batch.labels, kd)
    # by hand: each row alone, only the positions that predict a completion token
    want_kd = want_ce = 0.0
    for p, c in ex:
        ids = torch.tensor(p + c)
        s_row = s_ad.logits(s_ad.collate([ids.tolist()]))[0]
        t_row = t_ad.logits(t_ad.collate([ids.tolist()]))[0]
        pos = slice(len(p) - 1, len(p) + len(c) - 1)  # position t predicts token t + 1
        targets = ids[len(p):]
        want_kd = want_kd + dk.distillation_loss(s_row[pos], t_row[pos], targets, temperature=2.0, alpha=0.3,
                                                 divergence="reverse_kl", reduction="sum")
        want_ce = want_ce + F.cross_entropy(s_row[pos], targets, reduction="sum")
    assert int((batch.labels != -100).sum()) == sum(len(c) for _, c in ex)
    assert got_kd.item() == pytest.approx(want_kd.item(), rel=1e-5)
    assert got_ce.item() == pytest.approx(want_ce.item(), rel=1e-5)


def test_plain_sequences_still_score_everything_and_mix_with_pairs():
    ad = adapt(lm())
    batch = ad.collate([[3, 4, 5, 6], ([3, 4], [5, 6])])
    assert batch.labels.tolist() == [[4, 5, 6], [-100, 5, 6]]
    assert batch.input_ids.tolist() == [[3, 4, 5], [3, 4, 5]]


def test_pairs_from_json_lists_and_tensors_are_pairs():
    ad = adapt(lm())
    a = ad.collate([[[3, 4], [5]]]).labels.tolist()
    b = ad.collate([(torch.tensor([3, 4]), torch.tensor([5]))]).labels.tolist()
    assert a == b == [[-100, 5]]
    with pytest.raises(ValueError, match=r"examples\[0\] has 0 prompt and 1 completion"):
        ad.collate([([], [5])])


def test_stored_teacher_logits_sit_on_the_completion_positions():
    student, teacher = lm(0), lm(1, d=24)
    ex = pairs(8)
    stored = dk.precompute_teacher_logits(teacher, ex, progress=False, dtype=torch.float32)
    assert [row[-1].shape[0] for row in stored] == [len(c) for _, c in ex]
    s_ad = adapt(student)
    live = adapt(teacher).logits(s_ad.collate(ex))
    batch = s_ad.collate(stored)
    keep = batch.labels != -100
    assert torch.allclose(batch.teacher_logits[keep], live[keep], atol=1e-6)
    # training on them equals the live teacher, step for step
    a, b = lm(2), lm(2)
    cfg = dict(steps=3, batch_size=4, progress=False, device="cpu", warmup_steps=0)
    dk.train(a, stored, targets=dk.CachedTeacherLogits(dk.KDConfig()), config=dk.TrainConfig(**cfg))
    dk.distill(b, teacher, ex, config=dk.TrainConfig(**cfg))
    for k, v in a.state_dict().items():
        assert torch.allclose(v, b.state_dict()[k], atol=1e-5), k


def test_a_top_k_cache_of_pairs_scores_the_completions(tmp_path):
    teacher = lm(1, d=24)
    ex = pairs(10)
    cache = dk.cache_teacher_logits(teacher, ex, tmp_path / "c", top_k=V, dtype=torch.float32, progress=False)
    assert cache.num_tokens == sum(len(c) for _, c in ex)
    a, b = lm(2), lm(2)
    cfg = dict(steps=3, batch_size=4, progress=False, device="cpu", warmup_steps=0)
    dk.distill(a, cache, ex, config=dk.TrainConfig(**cfg))
    dk.distill(b, teacher, ex, config=dk.TrainConfig(**cfg))
    for k, v in a.state_dict().items():
        assert torch.allclose(v, b.state_dict()[k], atol=1e-4), k


@pytest.mark.parametrize("make", [lm, hf_lm], ids=["TransformerLM", "gpt2"])
def test_on_policy_honours_max_new_tokens(make):
    student, teacher = make(0), make(1)
    windows = [list(range(3, 15))] * 4
    scored = {}
    for n in (2, 80):
        targets = dk.OnPolicyTargets(teacher, lam=1.0, max_new_tokens=n)
        batch, _ = targets(adapt(student).collate(windows), student)
        scored[n] = int((batch.labels[0] != -100).sum())
    assert scored[2] <= 2 < scored[80] <= 6  # plain windows: at most to the window's length (12 - 6)
    targets = dk.OnPolicyTargets(teacher, lam=1.0, max_new_tokens=3)
    batch, _ = targets(adapt(student).collate(pairs(4)), student)
    first = (batch.labels != -100).int().argmax(1)
    for j, (p, _) in enumerate(pairs(4)):
        assert int(first[j]) == len(p) - 1  # the row's own prompt is kept
        assert 1 <= int((batch.labels[j] != -100).sum()) <= 3


# ---------------------------------------------------------------------------- context limits
@pytest.mark.parametrize("make", [lm, hf_lm], ids=["TransformerLM", "gpt2"])
def test_an_example_longer_than_the_model_reads_is_refused_before_any_step(make):
    model = make(0, max_len=16) if make is lm else make(0, positions=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ex = pairs(5) + [list(range(3, V)) * 2]  # 28 tokens: 27 positions
    with pytest.raises(ValueError, match=r"examples\[5\] has 27 positions but the model reads at most 16"):
        dk.train(model, ex, config=dk.TrainConfig(steps=1, progress=False, device="cpu"))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match=r"examples\[0\] has 27 positions"):
        dk.evaluate_loss(model, ex[-1:])
    with pytest.raises(ValueError, match=r"examples\[5\]"):
        dk.precompute_teacher_logits(model, ex, progress=False)


def test_max_length_keeps_the_completion_and_cuts_the_prompt_from_the_left():
    from distilkit.protocol import fit_to_context

    ad = adapt(lm(max_len=64))
    ex = [(list(range(3, 13)), [14, 15, 16]), list(range(3, 11)), ([3], [4])]
    with pytest.warns(UserWarning, match="max_length=5: 2 of 3 examples were cut"):
        out = fit_to_context(ad, ex, max_length=5)
    assert out[0] == ([10, 11, 12], [14, 15, 16])  # 5 positions: 3 prompt tokens + 3 completion - 1
    assert out[1] == [3, 4, 5, 6, 7, 8]  # a plain sequence keeps its first max_length + 1 tokens
    assert out[2] == ([3], [4])
    with pytest.raises(ValueError, match="completion alone has 3 tokens"):
        fit_to_context(ad, ex, max_length=2)
    with pytest.raises(ValueError, match="max_length=65 is more than the 64 positions"):
        fit_to_context(ad, ex, max_length=65)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fit_to_context(ad, ex) is ex  # nothing to cut: the same list, no warning
    # through training: the cut examples train, and TrainConfig checks its value
    with pytest.warns(UserWarning, match="were cut"):
        dk.train(lm(max_len=8), ex * 4, config=dk.TrainConfig(steps=1, batch_size=4, max_length=6,
                                                              progress=False, device="cpu"))
    with pytest.raises(ValueError, match="TrainConfig.max_length must be a positive int"):
        dk.TrainConfig(max_length=0)


# ---------------------------------------------------------------------------- chat and prompt records
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} "
                 "{% if m['role'] == 'assistant' %}<eos> {% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|> {% endif %}")
WORDS = "hello there how are you ok fine thanks and you good bye the eagle serves thai food name"


def chat_tokenizer():
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    raw = Tokenizer(models.WordLevel(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    raw.train_from_iterator([WORDS], trainers.WordLevelTrainer(
        special_tokens=["<pad>", "<unk>", "<eos>", "<|user|>", "<|assistant|>", "<|system|>"]))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", pad_token="<pad>",
                                               unk_token="<unk>")
    tok.chat_template = CHAT_TEMPLATE  # defined here: nothing is downloaded
    return tok


CHAT = {"messages": [{"role": "system", "content": "good"}, {"role": "user", "content": "hello there"},
                     {"role": "assistant", "content": "ok fine thanks"}, {"role": "user", "content": "how are you"},
                     {"role": "assistant", "content": "good bye"}]}


def test_chat_records_score_the_assistant_turns_only():
    tok = chat_tokenizer()
    pairs_ = dk.chat_examples([CHAT], tok)
    assert len(pairs_) == 2  # one example per assistant turn
    (p1, c1), (p2, c2) = pairs_
    assert tok.decode(c1) == "ok fine thanks <eos>" and tok.decode(c2) == "good bye <eos>"
    assert tok.decode(p1).endswith("<|user|> hello there <|assistant|>")
    assert tok.decode(p2).endswith("<|user|> how are you <|assistant|>") and p2[: len(p1)] == p1
    batch = adapt(hf_lm_for(tok)).collate(pairs_)
    scored = [tok.decode(row[row != -100]) for row in batch.labels]
    assert scored == ["ok fine thanks <eos>", "good bye <eos>"]


def hf_lm_for(tok, seed=0, width=16):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=len(tok), n_positions=64, n_embd=width, n_layer=1, n_head=2, bos_token_id=2,
        eos_token_id=2, pad_token_id=0))


def test_prompt_completion_records_and_their_errors():
    tok = chat_tokenizer()
    [(p, c)] = dk.chat_examples([{"prompt": "name the eagle", "completion": "the eagle serves thai food"}], tok)
    assert tok.decode(p) == "name the eagle" and tok.decode(c) == "the eagle serves thai food <eos>"
    with pytest.raises(ValueError, match=r"records\[1\]: has the keys \['text'\]"):
        dk.chat_examples([CHAT, {"text": "x"}], tok)
    with pytest.raises(ValueError, match=r"records\[0\]: the conversation has no assistant turn"):
        dk.chat_examples([{"messages": [{"role": "user", "content": "hello"}]}], tok)
    with pytest.raises(ValueError, match=r"records\[0\]: 'completion' must be a string, got int"):
        dk.chat_examples([{"prompt": "hello", "completion": 3}], tok)
    tok.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        dk.chat_examples([CHAT], tok)


def test_cli_distils_a_causal_student_on_chat_jsonl(tmp_path, capsys):
    import json

    from distilkit.cli import main

    tok = chat_tokenizer()
    for name, width in (("teacher", 24), ("student", 16)):
        hf_lm_for(tok, width=width).save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(CHAT) + "\n" for _ in range(12))
                    + json.dumps({"prompt": "hello there", "completion": "ok fine"}) + "\n")
    out = tmp_path / "distilled"
    assert main(["distill", "--teacher", str(tmp_path / "teacher"), "--student", str(tmp_path / "student"),
                 "--data", str(data), "--steps", "2", "--batch-size", "4", "--no-progress", "--device", "cpu",
                 "--out", str(out)]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["train_examples"] == 24  # 12 conversations x 2 assistant turns + 1 pair, one held out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(CHAT) + "\n" + json.dumps({"messages": "hi"}) + "\n")
    rc = main(["distill", "--teacher", str(tmp_path / "teacher"), "--student", str(tmp_path / "student"),
               "--data", str(bad), "--steps", "1", "--no-progress", "--out", str(tmp_path / "x")])
    assert rc == 2 and f"{bad}, line 2: 'messages' must be a non-empty list" in capsys.readouterr().err


# ---------------------------------------------------------------------------- teacher samples, LoRA
def test_teacher_samples_replace_the_completions_with_the_teachers():
    student, teacher = lm(0), lm(1, d=24)
    ex = pairs(6)
    targets = dk.TeacherSamples(teacher, max_new_tokens=4, sample_temperature=1e-4)  # ~ greedy
    assert targets.kd.alpha == 0.5 and targets.lam == 1.0
    batch, teacher_logits = targets(adapt(student).collate(ex), student)
    for j, (p, _) in enumerate(ex):
        want = dk.greedy(teacher, [p], max_new_tokens=4)[0]
        got = batch.labels[j][batch.labels[j] != -100].tolist()
        assert got[: len(want)] == want  # the teacher's own words are the new labels
        assert int((batch.labels[j] != -100).int().argmax()) == len(p) - 1  # after the same prompt
    assert teacher_logits.shape[:2] == batch.labels.shape
    history = dk.train(student, ex, targets=dk.TeacherSamples(teacher, max_new_tokens=4),
                       config=dk.TrainConfig(steps=3, batch_size=3, progress=False, device="cpu"))
    assert all(torch.isfinite(torch.tensor(history.train_loss)))


def test_a_lora_student_trains_and_exports_through_the_same_calls(tmp_path):
    peft = pytest.importorskip("peft")
    base, teacher = hf_lm(0), hf_lm(1, width=24)
    frozen = {k: v.clone() for k, v in base.state_dict().items()}
    student = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"],
                                                        lora_dropout=0.0))
    lora = {n for n, p in student.named_parameters() if p.requires_grad}
    assert lora and all("lora_" in n for n in lora)
    ex = pairs(12)
    dk.distill(student, teacher, ex, config=dk.TrainConfig(steps=3, batch_size=4, lr=1e-2, progress=False,
                                                           device="cpu", warmup_steps=0))
    changed = {n for n, p in student.named_parameters() if n in lora and p.abs().sum() > 0}
    assert changed  # the adapters learned (lora_B starts at zero)
    for k, v in student.get_base_model().state_dict().items():  # the base weights did not move
        if "lora_" not in k:
            assert torch.equal(v, frozen[k.replace(".base_layer", "")]), k
    dk.save_pretrained(student, tmp_path / "lora")
    assert (tmp_path / "lora" / "adapter_config.json").is_file()
    reloaded = peft.PeftModel.from_pretrained(hf_lm(0), tmp_path / "lora").eval()
    batch = adapt(student).collate(ex[:4])
    student.eval()
    assert torch.allclose(adapt(reloaded).logits(batch), adapt(student).logits(batch), atol=1e-6)
    assert dk.evaluate_loss(student, ex) == pytest.approx(dk.evaluate_loss(reloaded, ex), rel=1e-6)
