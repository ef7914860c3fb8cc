"""Command line: ``distilkit demo | train | distill | generate | evaluate``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

import torch

from .losses import DIVERGENCES

EPILOG = """examples:
  distilkit demo                          teacher vs baseline vs distilled student (~5-10 min on 2 CPUs)
  distilkit demo --json out.json          ... and write the figures as JSON
  distilkit train --preset d2t-teacher --steps 2000 --out teacher.safetensors
  distilkit distill --teacher teacher.safetensors --out student.safetensors
  distilkit generate --model student.safetensors --mr "name : the eagle | food : thai | area : riverside"
  distilkit evaluate --model student.safetensors
"""


def _kd_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("distillation")
    g.add_argument("--temperature", type=float, default=1.0, help="softmax temperature T > 0 (default 1)")
    g.add_argument("--alpha", type=float, default=0.5,
                   help="weight of the teacher (soft) term in [0, 1]; 1 - alpha weights the labels (default 0.5)")
    g.add_argument("--divergence", choices=DIVERGENCES, default="forward_kl", help="default forward_kl")
    g.add_argument("--beta", type=float, default=0.5, help="mixture weight for jsd / skew divergences")


def _train_args(p: argparse.ArgumentParser, steps: int) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, default=steps, help=f"optimizer steps (default {steps})")
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--lr", type=float, default=3e-3)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    g.add_argument("--checkpoint-dir", help="save resumable training state here; rerun to resume")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="distilkit",
        description="Knowledge distillation for text generators: train a teacher, distil a small "
                    "student, decode and evaluate. Built-in tasks need no downloads.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="run the whole experiment on the built-in data-to-text task",
                       description="Load the shipped teacher, train a same-size student on hard labels "
                                   "(baseline) and one with word-level KD, and compare all three on the "
                                   "test split: parameters, BLEU, slot error rate, perplexity, tokens/s.")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--seed", type=int, default=0, help="student initialisation and data order (default 0)")
    p.add_argument("--steps", type=int, default=1200, help="training steps for each student (default 1200)")
    p.add_argument("--transfer", type=int, default=6000, help="unlabelled inputs labelled by the teacher")
    p.add_argument("--teacher", help="teacher checkpoint (default: the one shipped with distilkit)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _kd_args(p)

    p = sub.add_parser("train", help="train a model on hard labels (e.g. a teacher)",
                       description="Train a model from a preset on a built-in task with cross-entropy.")
    p.add_argument("--preset", default="d2t-teacher", help="d2t-teacher, d2t-student, d2t-tiny, lm-teacher, lm-student")
    p.add_argument("--out", required=True, help="where to save the model (.safetensors)")
    p.add_argument("--corpus", help="text file for lm-* presets (default: Python's own help texts)")
    p.add_argument("--labelled", choices=["teacher", "student"], default="teacher",
                   help="d2t: the large teacher split (default) or the small student split")
    _train_args(p, 2000)

    p = sub.add_parser("distill", help="distil a teacher checkpoint into a smaller student",
                       description="Word-level KD (optionally on teacher-labelled transfer inputs) or "
                                   "sequence-level KD into a student preset.")
    p.add_argument("--teacher", required=True, help="teacher checkpoint (.safetensors)")
    p.add_argument("--preset", default="d2t-student", help="student preset (default d2t-student)")
    p.add_argument("--out", required=True, help="where to save the student (.safetensors)")
    p.add_argument("--transfer", type=int, default=6000, help="d2t: unlabelled inputs labelled by the teacher")
    p.add_argument("--sequence-level", action="store_true",
                   help="d2t: train on the teacher's beam-search outputs only (Kim & Rush 2016)")
    p.add_argument("--corpus", help="text file for lm-* presets")
    _kd_args(p)
    _train_args(p, 1200)

    p = sub.add_parser("generate", help="decode with a saved model",
                       description="Generate text from a data-to-text MR or a language-model prompt.")
    p.add_argument("--model", required=True, help="model checkpoint (.safetensors)")
    p.add_argument("--mr", help='data-to-text input, e.g. "name : the eagle | food : thai"')
    p.add_argument("--prompt", help="language-model prompt")
    p.add_argument("--method", choices=["greedy", "beam", "sample"], default="greedy")
    p.add_argument("--beam-size", type=int, default=4)
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--max-new-tokens", type=int, default=80)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("evaluate", help="score a saved model on the built-in task",
                       description="d2t models: BLEU, slot error rate, perplexity, tokens/s on the test "
                                   "split; LM models: held-out perplexity. Prints JSON.")
    p.add_argument("--model", required=True, help="model checkpoint (.safetensors)")
    p.add_argument("--split", choices=["valid", "test"], default="test")
    p.add_argument("--corpus", help="text file for language models")
    return ap


def _lm_examples(model_or_tok, corpus: Optional[str], block: int = 128):
    from .data import CharTokenizer, lm_examples, load_text_corpus

    text = load_text_corpus(corpus)
    split = int(0.9 * len(text))
    tok = model_or_tok if model_or_tok is not None else CharTokenizer.from_texts([text])
    return tok, lm_examples(tok.encode(text[:split]), block), lm_examples(tok.encode(text[split:]), block)[:200]


def _cmd_demo(args) -> int:
    from .experiments import run_demo
    from .train import KDConfig

    kd = KDConfig(temperature=args.temperature, alpha=args.alpha, divergence=args.divergence, beta=args.beta)
    res = run_demo(seed=args.seed, steps=args.steps, num_transfer=args.transfer, kd=kd,
                   teacher_path=args.teacher, device=args.device, progress=not args.no_progress)
    print()
    print(res.table())
    b, s = res.models["baseline"], res.models["student"]
    print(f"\ndistilled vs baseline: BLEU {s['bleu'] - b['bleu']:+.2f}, "
          f"slot error rate {100 * (s['slot_error_rate'] - b['slot_error_rate']):+.2f} points")
    if args.json:
        Path(args.json).write_text(json.dumps(res.to_json(), indent=2))
        print(f"wrote {args.json}")
    return 0


def _train_config(args, desc):
    from .train import TrainConfig

    return TrainConfig(steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
                       seed=args.seed, device=args.device, checkpoint_dir=args.checkpoint_dir,
                       progress=not args.no_progress, restore_best=True, desc=desc)


def _cmd_train(args) -> int:
    from .checkpoint import save_model
    from .data import make_data_to_text
    from .models import count_parameters, make_model
    from .train import train

    if args.preset.startswith("lm-"):
        tok, tr, va = _lm_examples(None, args.corpus)
    else:
        data = make_data_to_text()
        tok = data.tokenizer
        tr = data.encode_pairs(data.teacher_train if args.labelled == "teacher" else data.train)
        va = data.encode_pairs(data.valid)
    model = make_model(args.preset, len(tok))
    hist = train(model, tr, config=_train_config(args, args.preset), valid_examples=va)
    save_model(model, args.out, tok, extra={"history": hist.to_dict()})
    print(json.dumps({"params": count_parameters(model), "best_valid_loss": hist.best_valid_loss,
                      "out": args.out}))
    return 0


def _cmd_distill(args) -> int:
    from .checkpoint import load_model, save_model
    from .data import make_data_to_text
    from .models import count_parameters, make_model
    from .train import HardLabels, KDConfig, TeacherLogits, sequence_level_data, train

    teacher, tok, _ = load_model(args.teacher)
    if tok is None:
        raise ValueError(f"--teacher {args.teacher} has no tokenizer stored; save it with save_model(..., tokenizer)")
    kd = KDConfig(temperature=args.temperature, alpha=args.alpha, divergence=args.divergence, beta=args.beta)
    if teacher.kind == "lm":
        _, tr, va = _lm_examples(tok, args.corpus)
    else:
        data = make_data_to_text()
        if tok != data.tokenizer:
            raise ValueError("--teacher was trained with a different tokenizer than the built-in task's")
        va = data.encode_pairs(data.valid)
        if args.sequence_level:
            tr = sequence_level_data(teacher, data.encode_inputs([m for m, _ in data.train] + data.transfer[: args.transfer]))
        else:
            tr = data.encode_pairs(data.train) + sequence_level_data(
                teacher, data.encode_inputs(data.transfer[: args.transfer]), method="greedy")
    student = make_model(args.preset, len(tok))
    targets = HardLabels() if args.sequence_level else TeacherLogits(teacher, kd)
    hist = train(student, tr, config=_train_config(args, "distil"), targets=targets, valid_examples=va)
    save_model(student, args.out, tok, extra={"history": hist.to_dict(), "teacher": str(args.teacher)})
    print(json.dumps({"params": count_parameters(student), "teacher_params": count_parameters(teacher),
                      "best_valid_loss": hist.best_valid_loss, "out": args.out}))
    return 0


def _cmd_generate(args) -> int:
    from .checkpoint import load_model
    from .generate import generate

    model, tok, _ = load_model(args.model)
    if tok is None:
        raise ValueError(f"--model {args.model} has no tokenizer stored")
    text = args.mr if model.kind == "seq2seq" else args.prompt
    if not text:
        flag = "--mr" if model.kind == "seq2seq" else "--prompt"
        raise ValueError(f"{flag} is required for this {model.kind} model")
    torch.manual_seed(args.seed)
    kwargs = {"max_new_tokens": args.max_new_tokens}
    if args.method == "beam":
        kwargs["beam_size"] = args.beam_size
    if args.method == "sample":
        kwargs.update(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                      generator=torch.Generator().manual_seed(args.seed))
    ids = tok.encode(text)
    if not ids:
        raise ValueError("the input text has no tokens")
    out = generate(model, [ids], method=args.method, **kwargs)[0]
    print((text if model.kind == "lm" else "") + tok.decode(out))
    return 0


def _cmd_evaluate(args) -> int:
    from .checkpoint import load_model
    from .data import make_data_to_text
    from .experiments import evaluate_d2t
    from .metrics import perplexity

    model, tok, _ = load_model(args.model)
    if model.kind == "lm":
        _, _, va = _lm_examples(tok, args.corpus)
        print(json.dumps({"perplexity": round(perplexity(model, va), 3)}))
        return 0
    data = make_data_to_text()
    if tok is not None and tok != data.tokenizer:
        raise ValueError(f"--model {args.model} uses a different tokenizer than the built-in task")
    res = evaluate_d2t(model, data, args.split)
    res.pop("outputs")
    print(json.dumps(res))
    return 0


def _check_early(args) -> None:
    """Refuse a bad --device or --preset before minutes of data generation and training."""
    if getattr(args, "device", None) is not None:
        from .train import resolve_device

        try:
            resolve_device(args.device)
        except ValueError as exc:
            raise ValueError(f"--device: {exc}") from None
    if getattr(args, "preset", None) is not None:
        from .models import PRESETS

        if args.preset not in PRESETS:
            raise ValueError(f"--preset must be one of {', '.join(PRESETS)}; got {args.preset!r}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    commands = {"demo": _cmd_demo, "train": _cmd_train, "distill": _cmd_distill,
                "generate": _cmd_generate, "evaluate": _cmd_evaluate}
    try:
        _check_early(args)
        return commands[args.command](args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"distilkit {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
