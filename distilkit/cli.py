"""Command line: ``distilkit demo | train | distill | cache-teacher | generate | evaluate``.

Only the standard library is imported at module level: ``distilkit --help`` and argument errors
answer without importing torch; each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional

from . import __version__

# the choices of --divergence; a test checks that they equal distilkit.losses.DIVERGENCES
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "tvd", "skew_forward_kl", "skew_reverse_kl")

# Python names that validation errors (TrainConfig, KDConfig, losses, decoding) speak of -> the flag
# that fed them, so that a user reads "--steps must be ...", not "TrainConfig.steps must be ...".
FLAG_OF: Dict[str, str] = {
    "TrainConfig.steps": "--steps",
    "TrainConfig.batch_size": "--batch-size",
    "TrainConfig.grad_accum": "--grad-accum",
    "TrainConfig.lr": "--lr",
    "KDConfig.alpha": "--alpha",
    "KDConfig.beta": "--beta",
    "temperature": "--temperature",
    "beam_size": "--beam-size",
    "top_k": "--top-k",
    "top_p": "--top-p",
    "max_new_tokens": "--max-new-tokens",
    "device": "--device",
}
_FLAG_RE = re.compile(
    r"(?<![\w.-])(" + "|".join(re.escape(k) for k in sorted(FLAG_OF, key=len, reverse=True)) + r")"
    r"(?=(?: \([^)]*\))? must\b)")


def flag_message(message: str) -> str:
    """``message`` with each Python name that a check complains about ("TrainConfig.steps must be
    a positive int") replaced by its command-line flag ("--steps must be a positive int")."""
    return _FLAG_RE.sub(lambda m: FLAG_OF[m.group(1)], message)


EPILOG = """examples:
  distilkit demo                          teacher vs baseline vs distilled student (~5-10 min on 2 CPUs)
  distilkit demo --json out.json          ... and write the figures as JSON
  distilkit train --preset d2t-teacher --steps 2000 --out teacher.safetensors
  distilkit distill --teacher d2t-teacher --out student.safetensors
  distilkit generate --model student.safetensors --mr "name : the eagle | food : thai | area : riverside"
  distilkit evaluate --model d2t-teacher

--model and --teacher take a checkpoint file or the name of one shipped with distilkit (d2t-teacher).

your own data and Hugging Face models (pip install "distilkit[hf]"):
  distilkit train --preset lm-teacher --data notes.txt --out lm.safetensors
  distilkit train --model ./my-gpt2 --data notes.txt --out ./my-gpt2-tuned
  distilkit distill --teacher ./my-gpt2 --student ./tiny-gpt2 --data notes.txt --out ./student
  distilkit distill --teacher d2t-teacher --data pairs.jsonl --out student.safetensors
  distilkit cache-teacher --teacher ./my-gpt2 --data notes.txt --top-k 32 --out ./cache
  distilkit distill --cache ./cache --student ./tiny-gpt2 --data notes.txt --out ./student

--data: a text file (language models) or a .jsonl file of {"input": ..., "output": ...} lines
(encoder-decoder models); a malformed line is an error naming its line number.
"""

CHECKPOINT_HELP = "checkpoint file (.safetensors) or the name of a shipped one, e.g. d2t-teacher"


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


def _data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("your data")
    g.add_argument("--data", metavar="PATH",
                   help="a text file (language models) or .jsonl of {\"input\": ..., \"output\": ...} "
                        "lines (encoder-decoder models); the last 5%% is held out for validation")
    g.add_argument("--block-size", type=int, default=128, help="tokens per language-model window (default 128)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command (imports nothing heavy)."""
    ap = argparse.ArgumentParser(
        prog="distilkit",
        description="Knowledge distillation for text generators: train a teacher, distil a small "
                    "student, decode and evaluate. Built-in tasks need no downloads.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="run the whole experiment on the built-in data-to-text task",
                       description="Load the shipped teacher, train a same-size student on hard labels "
                                   "(baseline) and one with word-level KD, and compare all three on the "
                                   "test split: parameters, BLEU, slot error rate, perplexity, tokens/s.")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON (checked before the run)")
    p.add_argument("--seed", type=int, default=0, help="student initialisation and data order (default 0)")
    p.add_argument("--steps", type=int, default=1200, help="training steps for each student (default 1200)")
    p.add_argument("--transfer", type=int, default=6000, help="unlabelled inputs labelled by the teacher")
    p.add_argument("--teacher", help=CHECKPOINT_HELP + " (default: d2t-teacher)")
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
    p.add_argument("--model", metavar="NAME_OR_PATH",
                   help="train this Hugging Face model (a name or a save_pretrained folder) instead of "
                        "a preset; --out is then a folder")
    _data_args(p)
    _train_args(p, 2000)

    p = sub.add_parser("distill", help="distil a teacher checkpoint into a smaller student",
                       description="Word-level KD (optionally on teacher-labelled transfer inputs) or "
                                   "sequence-level KD into a student preset.")
    p.add_argument("--teacher", help=CHECKPOINT_HELP + ", or a Hugging Face model name or folder")
    p.add_argument("--cache", metavar="DIR",
                   help="distil from a teacher cache written by cache-teacher instead of --teacher")
    p.add_argument("--preset", default="d2t-student", help="student preset (default d2t-student)")
    p.add_argument("--student", metavar="NAME_OR_PATH",
                   help="a Hugging Face student (name or folder) instead of --preset; --out is then a folder")
    p.add_argument("--out", required=True, help="where to save the student (.safetensors)")
    p.add_argument("--transfer", type=int, default=6000, help="d2t: unlabelled inputs labelled by the teacher")
    p.add_argument("--sequence-level", action="store_true",
                   help="d2t: train on the teacher's beam-search outputs only (Kim & Rush 2016)")
    p.add_argument("--corpus", help="text file for lm-* presets")
    _data_args(p)
    _kd_args(p)
    _train_args(p, 1200)

    p = sub.add_parser("cache-teacher", help="run a teacher once and store its top-k log-probabilities",
                       description="Write the teacher's top-k next-token log-probabilities for every "
                                   "target token of the data to a folder (safetensors shards + "
                                   "manifest.json + the tokenizer), for `distill --cache`.")
    p.add_argument("--teacher", required=True, help=CHECKPOINT_HELP + ", or a Hugging Face model name or folder")
    p.add_argument("--out", required=True, metavar="DIR", help="the cache folder (created or replaced)")
    p.add_argument("--top-k", type=int, default=32, help="log-probabilities kept per token (default 32)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature T > 0 (default 1)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _data_args(p)

    p = sub.add_parser("generate", help="decode with a saved model",
                       description="Generate text from a data-to-text MR or a language-model prompt. "
                                   "Every word of the input must be in the model's vocabulary.")
    p.add_argument("--model", required=True, help=CHECKPOINT_HELP)
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
                                   "split; LM models: held-out perplexity. Prints JSON on stdout; the "
                                   "progress bar goes to stderr.")
    p.add_argument("--model", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--split", choices=["valid", "test"], default="test")
    p.add_argument("--corpus", help="text file for language models")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return ap


# ============================================================================ argument checks
def _checkpoint(value: str, flag: str) -> Path:
    """The file behind ``--model``/``--teacher``: a path, or the name of a shipped checkpoint."""
    from .experiments import checkpoint_path, shipped_checkpoints

    path = Path(value)
    if path.is_file():
        return path
    if path.is_dir():
        raise ValueError(f"{flag} {value}: is a folder; give a checkpoint file (.safetensors)")
    names = shipped_checkpoints()
    if value in names:
        return checkpoint_path(value)
    raise FileNotFoundError(f"{flag} {value}: no such file, and no shipped checkpoint of that name "
                            f"(shipped: {', '.join(names) or 'none'})")


def _check_output(value: str, flag: str) -> None:
    """Refuse an output path that cannot be written, before any work is done."""
    path = Path(value)
    folder = path.parent
    if path.is_dir():
        raise ValueError(f"{flag} {value}: is a folder; give a file path")
    if not folder.is_dir():
        raise ValueError(f"{flag} {value}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"{flag} {value}: cannot write there (permission denied)")


def _train_config(args, desc):
    from .train import TrainConfig

    return TrainConfig(steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
                       seed=args.seed, device=args.device, checkpoint_dir=args.checkpoint_dir,
                       progress=not args.no_progress, restore_best=True, desc=desc)


def _kd_config(args):
    from .train import KDConfig

    return KDConfig(temperature=args.temperature, alpha=args.alpha, divergence=args.divergence, beta=args.beta)


def _check_transfer(args) -> None:
    if args.transfer < 0:
        raise ValueError(f"--transfer must be an int >= 0, got {args.transfer}")


def _check_early(args) -> None:
    """Refuse a bad --device or --preset before minutes of data generation and training."""
    if getattr(args, "device", None) is not None:
        from .train import resolve_device

        try:
            resolve_device(args.device)
        except ValueError as exc:
            message = flag_message(str(exc))
            raise ValueError(message if message.startswith("--device") else f"--device: {message}") from None
    if getattr(args, "preset", None) is not None:
        from .models import PRESETS

        if args.preset not in PRESETS:
            raise ValueError(f"--preset must be one of {', '.join(PRESETS)}; got {args.preset!r}")


# ============================================================================ commands
def _lm_examples(model_or_tok, corpus: Optional[str], block: int = 128):
    from .data import CharTokenizer, lm_examples, load_text_corpus

    text = load_text_corpus(corpus)
    split = int(0.9 * len(text))
    tok = model_or_tok if model_or_tok is not None else CharTokenizer.from_texts([text])
    return tok, lm_examples(tok.encode(text[:split]), block), lm_examples(tok.encode(text[split:]), block)[:200]


def _cmd_demo(args) -> int:
    from .experiments import run_demo
    from .train import TrainConfig

    kd = _kd_config(args)
    TrainConfig(steps=args.steps, device=args.device)  # the demo's own config: refuse a bad --steps now
    _check_transfer(args)
    teacher = _checkpoint(args.teacher, "--teacher") if args.teacher else None
    if args.json:
        _check_output(args.json, "--json")
    res = run_demo(seed=args.seed, steps=args.steps, num_transfer=args.transfer, kd=kd,
                   teacher_path=teacher, device=args.device, progress=not args.no_progress)
    print()
    print(res.table())
    b, s = res.models["baseline"], res.models["student"]
    print(f"\ndistilled vs baseline: BLEU {s['bleu'] - b['bleu']:+.2f}, "
          f"slot error rate {100 * (s['slot_error_rate'] - b['slot_error_rate']):+.2f} points")
    if args.json:
        Path(args.json).write_text(json.dumps(res.to_json(), indent=2))
        print(f"wrote {args.json}")
    return 0


def _cmd_train(args) -> int:
    if args.data or args.model:
        from .cli_user import train_user

        return train_user(args)
    config = _train_config(args, args.preset)
    _check_output(args.out, "--out")
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
    hist = train(model, tr, config=config, valid_examples=va)
    save_model(model, args.out, tok, extra={"history": hist.to_dict()})
    print(json.dumps({"params": count_parameters(model), "best_valid_loss": hist.best_valid_loss,
                      "out": args.out}))
    return 0


def _cmd_distill(args) -> int:
    from .cli_user import distill_user, wants_user_path

    if wants_user_path(args):
        return distill_user(args)
    kd, config = _kd_config(args), _train_config(args, "distil")
    _check_transfer(args)
    _check_output(args.out, "--out")
    teacher_path = _checkpoint(args.teacher, "--teacher")
    from .adapters import adapt
    from .checkpoint import load_model, save_model
    from .data import make_data_to_text
    from .models import count_parameters, make_model
    from .train import HardLabels, TeacherLogits, sequence_level_data, train

    teacher, tok, _ = load_model(teacher_path)
    if tok is None:
        raise ValueError(f"--teacher {args.teacher} has no tokenizer stored; save it with save_model(..., tokenizer)")
    if adapt(teacher).kind == "lm":
        _, tr, va = _lm_examples(tok, args.corpus)
    else:
        data = make_data_to_text()
        if tok != data.tokenizer:
            raise ValueError("--teacher was trained with a different tokenizer than the built-in task's")
        va = data.encode_pairs(data.valid)
        progress = not args.no_progress
        if args.sequence_level:
            tr = sequence_level_data(teacher, data.encode_inputs([m for m, _ in data.train] + data.transfer[: args.transfer]),
                                     progress=progress)
        else:
            tr = data.encode_pairs(data.train) + sequence_level_data(
                teacher, data.encode_inputs(data.transfer[: args.transfer]), method="greedy", progress=progress)
    student = make_model(args.preset, len(tok))
    targets = HardLabels() if args.sequence_level else TeacherLogits(teacher, kd)
    hist = train(student, tr, config=config, targets=targets, valid_examples=va)
    save_model(student, args.out, tok, extra={"history": hist.to_dict(), "teacher": str(args.teacher)})
    print(json.dumps({"params": count_parameters(student), "teacher_params": count_parameters(teacher),
                      "best_valid_loss": hist.best_valid_loss, "out": args.out}))
    return 0


def _cmd_generate(args) -> int:
    model_path = _checkpoint(args.model, "--model")
    import torch

    from .adapters import adapt
    from .checkpoint import load_model
    from .generate import generate

    model, tok, _ = load_model(model_path)
    if tok is None:
        raise ValueError(f"--model {args.model} has no tokenizer stored")
    kind = adapt(model).kind
    flag = "--mr" if kind == "seq2seq" else "--prompt"
    text = args.mr if kind == "seq2seq" else args.prompt
    if not text:
        raise ValueError(f"{flag} is required for this {kind} model")
    try:
        ids = tok.encode(text, unknown="error")
    except ValueError as exc:
        raise ValueError(f"{flag}: {exc}; the model can only read what its {tok.kind} tokenizer "
                         f"knows ({len(tok)} entries)") from None
    if not ids:
        raise ValueError(f"{flag} has no tokens")
    torch.manual_seed(args.seed)
    kwargs = {"max_new_tokens": args.max_new_tokens}
    if args.method == "beam":
        kwargs["beam_size"] = args.beam_size
    if args.method == "sample":
        kwargs.update(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                      generator=torch.Generator().manual_seed(args.seed))
    out = generate(model, [ids], method=args.method, **kwargs)[0]
    print((text if kind == "lm" else "") + tok.decode(out))
    return 0


def _cmd_evaluate(args) -> int:
    model_path = _checkpoint(args.model, "--model")
    from .adapters import adapt
    from .checkpoint import load_model
    from .data import make_data_to_text
    from .experiments import evaluate_d2t
    from .metrics import perplexity

    model, tok, _ = load_model(model_path)
    if adapt(model).kind == "lm":
        _, _, va = _lm_examples(tok, args.corpus)
        print(json.dumps({"perplexity": round(perplexity(model, va), 3)}))
        return 0
    data = make_data_to_text()
    if tok is not None and tok != data.tokenizer:
        raise ValueError(f"--model {args.model} uses a different tokenizer than the built-in task")
    res = evaluate_d2t(model, data, args.split, progress=not args.no_progress)
    res.pop("outputs")
    print(json.dumps(res))
    return 0


def _cmd_cache_teacher(args) -> int:
    from .cli_user import cache_teacher

    return cache_teacher(args)


COMMANDS = {"demo": _cmd_demo, "train": _cmd_train, "distill": _cmd_distill,
            "cache-teacher": _cmd_cache_teacher, "generate": _cmd_generate, "evaluate": _cmd_evaluate}


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        _check_early(args)
        return COMMANDS[args.command](args)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as exc:
        print(f"distilkit {args.command}: error: {flag_message(str(exc))}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
