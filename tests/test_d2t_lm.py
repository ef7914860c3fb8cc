"""The decoder-only data-to-text task (chapter 10): chat-turn pairs, the shipped causal teacher
and the causal BLEU / slot-error evaluation."""

from __future__ import annotations

import torch

import distilkit as dk
from distilkit.adapters import adapt
from distilkit.experiments import (
    d2t_lm_decode,
    d2t_lm_pairs,
    d2t_lm_prompt,
    d2t_lm_tokenizer,
    evaluate_d2t_lm,
)

torch.set_num_threads(1)


def test_the_tokenizer_adds_the_role_words_and_keeps_every_task_id():
    data = dk.make_data_to_text()
    tok = d2t_lm_tokenizer(data)
    assert tok.itos[: len(data.tokenizer)] == data.tokenizer.itos
    assert tok.itos[len(data.tokenizer):] == [w for w in ("user", "assistant") if w not in data.tokenizer.stoi]
    mr, text = data.train[0]
    assert d2t_lm_prompt(tok, mr) == tok.encode(f"user : {dk.linearize_mr(mr)} assistant :")
    assert tok.unk_id not in d2t_lm_prompt(tok, mr)
    (p, c), = d2t_lm_pairs(tok, [(mr, text)])
    assert c[-1] == tok.eos_id and tok.decode(c) == tok.decode(tok.encode(text))
    # only the completion is scored
    batch = adapt(dk.make_model("lm-student", len(tok), max_len=128)).collate([(p, c)])
    assert int((batch.labels != -100).sum()) == len(c)


def test_the_shipped_causal_teacher_carries_its_tokenizer_and_describes_an_mr():
    data = dk.make_data_to_text()
    teacher, tok, meta = dk.load_teacher("d2t-lm-teacher")
    assert "d2t-lm-teacher" in dk.experiments.shipped_checkpoints()
    assert tok == d2t_lm_tokenizer(data)
    assert teacher.kind != "seq2seq" and meta["extra"]["info"]["train_pairs"] == 40000
    items = data.test[:12]
    res = evaluate_d2t_lm(teacher, tok, items)
    assert res["bleu"] > 50 and res["slot_error_rate"] < 0.3
    # decoding groups prompts by length but returns the outputs in input order
    one_by_one = [d2t_lm_decode(teacher, tok, [mr])[0] for mr, _ in items[:4]]
    assert res["outputs"][:4] == one_by_one
