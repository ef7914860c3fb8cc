"""Train the small teacher checkpoints that the book and `distilkit demo` load.

    python scripts/train_checkpoints.py            # both teachers
    python scripts/train_checkpoints.py --only d2t # the data-to-text teacher only

The data-to-text teacher is trained on the large `teacher_train` split (40,000 generated
pairs), which the students never see with references: the teacher knows more than the
student's small labelled set can teach. Runs resume from `.checkpoint_runs/` if interrupted.
Output: `distilkit/checkpoints/<name>.safetensors` (weights + config + tokenizer, no pickle).
"""
import argparse
import json
import time
from pathlib import Path

import torch

from distilkit.checkpoint import save_model
from distilkit.data import CharTokenizer, collate_lm, lm_examples, load_text_corpus, make_data_to_text
from distilkit.models import count_parameters, make_model
from distilkit.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "distilkit" / "checkpoints"
RUNS = ROOT / ".checkpoint_runs"
D2T_TEACHER = dict(preset="d2t-teacher", overrides=dict(embed_dim=96, hidden_dim=192),
                   steps=2000, batch_size=64, lr=3e-3)
LM_TEACHER = dict(preset="lm-teacher", steps=1500, batch_size=32, block=128, lr=2e-3)


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
            "train_pairs": len(data.teacher_train)}
    save_model(model, OUT / "d2t-teacher.safetensors", data.tokenizer,
               extra={"recipe": D2T_TEACHER, "info": info, "history": hist.to_dict()})
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


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["d2t", "lm"], help="train one teacher only")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.only in (None, "d2t"):
        d2t(args.threads)
    if args.only in (None, "lm"):
        lm(args.threads)
