"""Train the small teacher checkpoints that the book and `distilkit demo` load.

    python scripts/train_checkpoints.py            # both teachers
    python scripts/train_checkpoints.py --only d2t # the data-to-text teacher only
    python scripts/train_checkpoints.py --only d2t-lm --threads 1  # its decoder-only twin (chapter 10)
    python scripts/train_checkpoints.py --only gpt2  # tokenizer + GPT-2 teacher (needs the hf extra)
    python scripts/train_checkpoints.py --only d2t --out runs/teachers  # elsewhere, to compare first

The data-to-text teacher is trained on the large `teacher_train` split (40,000 generated
pairs), which the students never see with references: the teacher knows more than the
student's small labelled set can teach. Its inputs have 1 to all 8 attributes besides the name
(the students' splits have 3 to 7), so it has seen every input size a user can give it. Runs resume from `.checkpoint_runs/` if interrupted.
Output: `distilkit/checkpoints/<name>.safetensors` (weights + config + tokenizer, no pickle).

The decoder-only data-to-text teacher (``d2t-lm-teacher``, a 2-layer ``TransformerLM``) reads the
same 40,000 pairs as chat turns: prompt ``user : <linearized MR> assistant :``, completion the
description + ``<eos>``; hard labels on the completion tokens only. Its tokenizer is the task's
word tokenizer plus the role words, saved with the checkpoint.

The GPT-2 teacher of chapter 7 is a Hugging Face `GPT2LMHeadModel` with a byte-level BPE
tokenizer trained here, with the `tokenizers` library, on the same English corpus; both are
saved with `save_pretrained` into `distilkit/checkpoints/gpt2-pydoc/` (model.safetensors,
config.json, tokenizer.json + its config), loadable offline with `from_pretrained`.
"""
import argparse
import json
import time
from pathlib import Path

import torch

from distilkit.checkpoint import save_model
from distilkit.data import CharTokenizer, collate_lm, lm_examples, load_text_corpus, make_data_to_text
from distilkit.models import count_parameters, make_model
from distilkit.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "distilkit" / "checkpoints"  # --out replaces it
RUNS = ROOT / ".checkpoint_runs"
D2T_TEACHER = dict(preset="d2t-teacher", overrides={}, steps=2000, batch_size=64, lr=3e-3)
D2T_LM_TEACHER = dict(preset="lm-teacher", overrides=dict(n_layers=2, max_len=128), steps=600, batch_size=64,
                      lr=2e-3)
LM_TEACHER = dict(preset="lm-teacher", steps=1600, batch_size=32, block=64, lr=2e-3)
GPT2_TEACHER = dict(vocab_size=1024, n_layer=2, n_embd=96, n_head=4, block=32, steps=600,
                    batch_size=16, lr=3e-3)


def d2t(threads):
    data = make_data_to_text()
    model = make_model(D2T_TEACHER["preset"], len(data.tokenizer), **D2T_TEACHER["overrides"])
    cfg = TrainConfig(steps=D2T_TEACHER["steps"], batch_size=D2T_TEACHER["batch_size"],
                      lr=D2T_TEACHER["lr"], warmup_steps=100, eval_every=100, restore_best=True,
                      checkpoint_dir=str(RUNS / "d2t-teacher"), checkpoint_every=100,
                      desc="d2t teacher")
    t = time.time()
    hist = train(model, data.encode_pairs(data.teacher_train), config=cfg,
                 valid_examples=data.encode_pairs(data.valid))
    info = {"params": count_parameters(model), "steps": cfg.steps, "seconds": round(time.time() - t, 1),
            "best_valid_loss": round(hist.best_valid_loss, 4), "threads": threads,
            "train_pairs": len(data.teacher_train), "slots": data.info["teacher_slots"]}
    save_model(model, OUT / "d2t-teacher.safetensors", data.tokenizer,
               extra={"recipe": D2T_TEACHER, "info": info, "history": hist.to_dict()})
    print(json.dumps(info))


def d2t_lm(threads):
    from distilkit.experiments import d2t_lm_pairs, d2t_lm_tokenizer

    r = D2T_LM_TEACHER
    data = make_data_to_text()
    tok = d2t_lm_tokenizer(data)
    model = make_model(r["preset"], len(tok), **r["overrides"])
    cfg = TrainConfig(steps=r["steps"], batch_size=r["batch_size"], lr=r["lr"], warmup_steps=50, eval_every=100,
                      restore_best=True, checkpoint_dir=str(RUNS / "d2t-lm-teacher"), checkpoint_every=50,
                      desc="d2t-lm teacher")
    t = time.time()
    hist = train(model, d2t_lm_pairs(tok, data.teacher_train), config=cfg,
                 valid_examples=d2t_lm_pairs(tok, data.valid))
    info = {"params": count_parameters(model), "steps": cfg.steps, "seconds": round(time.time() - t, 1),
            "best_valid_loss": round(hist.best_valid_loss, 4), "threads": threads,
            "train_pairs": len(data.teacher_train)}
    save_model(model, OUT / "d2t-lm-teacher.safetensors", tok,
               extra={"recipe": r, "info": info, "history": hist.to_dict()})
    print(json.dumps(info))


def lm(threads):
    text = load_text_corpus()
    split = int(0.9 * len(text))
    tok = CharTokenizer.from_texts([text])
    train_ex = lm_examples(tok.encode(text[:split]), LM_TEACHER["block"])
    valid_ex = lm_examples(tok.encode(text[split:]), LM_TEACHER["block"])[:200]
    model = make_model(LM_TEACHER["preset"], len(tok))
    cfg = TrainConfig(steps=LM_TEACHER["steps"], batch_size=LM_TEACHER["batch_size"], lr=LM_TEACHER["lr"],
                      warmup_steps=100, eval_every=100, restore_best=True,
                      checkpoint_dir=str(RUNS / "lm-teacher"), checkpoint_every=100, desc="lm teacher")
    t = time.time()
    hist = train(model, train_ex, config=cfg, valid_examples=valid_ex, collate=collate_lm)
    info = {"params": count_parameters(model), "steps": cfg.steps, "seconds": round(time.time() - t, 1),
            "best_valid_loss": round(hist.best_valid_loss, 4), "threads": threads}
    save_model(model, OUT / "lm-teacher.safetensors", tok,
               extra={"recipe": LM_TEACHER, "info": info, "history": hist.to_dict()})
    print(json.dumps(info))


def train_bpe_tokenizer(text: str, vocab_size: int):
    """A byte-level BPE tokenizer (GPT-2's scheme) trained on ``text``, as a transformers
    ``PreTrainedTokenizerFast`` whose one special token ``<|endoftext|>`` is eos and padding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    raw.train_from_iterator(text.split("\n\n"), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   model_max_length=1_000_000)


def gpt2(threads):
    from transformers import GPT2Config, GPT2LMHeadModel

    r = GPT2_TEACHER
    text = load_text_corpus()
    split = int(0.9 * len(text))
    tok = train_bpe_tokenizer(text[:split], r["vocab_size"])
    train_ex = lm_examples(tok(text[:split])["input_ids"], r["block"])
    valid_ex = lm_examples(tok(text[split:])["input_ids"], r["block"])[:200]
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=r["block"], n_embd=r["n_embd"],
                                       n_layer=r["n_layer"], n_head=r["n_head"],
                                       bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                                       pad_token_id=tok.pad_token_id))
    cfg = TrainConfig(steps=r["steps"], batch_size=r["batch_size"], lr=r["lr"], warmup_steps=100,
                      eval_every=100, restore_best=True, checkpoint_dir=str(RUNS / "gpt2-pydoc"),
                      checkpoint_every=100, desc="gpt2 teacher")
    t = time.time()
    hist = train(model, train_ex, config=cfg, valid_examples=valid_ex)
    info = {"params": count_parameters(model), "steps": cfg.steps, "seconds": round(time.time() - t, 1),
            "best_valid_loss": round(hist.best_valid_loss, 4), "threads": threads,
            "train_windows": len(train_ex), "recipe": r}
    out = OUT / "gpt2-pydoc"
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    (out / "training.json").write_text(json.dumps({"info": info, "history": hist.to_dict()}) + "\n")
    print(json.dumps(info))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["d2t", "d2t-lm", "lm", "gpt2"], help="train one teacher only")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--out", type=Path, default=OUT, help="folder for the checkpoints (default: %(default)s)")
    args = ap.parse_args()
    OUT = args.out
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    if args.only in (None, "d2t"):
        d2t(args.threads)
    if args.only in (None, "d2t-lm"):
        d2t_lm(args.threads)
    if args.only in (None, "lm"):
        lm(args.threads)
    if args.only in (None, "gpt2"):
        gpt2(args.threads)
