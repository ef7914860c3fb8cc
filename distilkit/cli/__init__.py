"""Command line: ``distilkit demo | train | distill | cache-teacher | generate | evaluate``.

Three rooms: this module (the parser, flag names in errors, ``main``; standard library only, so
``distilkit --help`` and argument errors answer without importing torch), :mod:`.inputs` (flags ->
models, data and configs, decided once for built-in and user data alike, and the rule that a
flag which does not apply to the chosen data or model is refused) and :mod:`.commands` (one
function per command).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import List, Optional

from .. import __version__
from .flags import FLAG_OF, flag_message  # noqa: F401  (FLAG_OF: the table, for tests and docs)

# the choices of --divergence; a test checks that they equal distilkit.losses.DIVERGENCES
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "tvd", "skew_forward_kl", "skew_reverse_kl")


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

A flag that does not apply to the chosen model or data is refused with an error naming it.

--data: a text file (language models), or a .jsonl file: {"input": ..., "output": ...} lines for
encoder-decoder models; for language models {"messages": [...]} chat lines (the tokenizer's chat
template; assistant turns scored), {"prompt": ..., "completion": ...} or input/output lines (the
completion scored). A malformed line is an error naming its line number.
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
    g.add_argument("--block-size", type=int, default=128,
                   help="language models: tokens per training window (default 128)")
    g.add_argument("--max-length", type=int, metavar="N",
                   help="cut examples longer than N positions (a prompt loses tokens from its left, the "
                        "completion is kept); default: an example longer than the model reads is an error")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command (imports nothing heavy)."""
    ap = argparse.ArgumentParser(
        prog="distilkit",
        description="Knowledge distillation for text generators: train a teacher, distil a small "
                    "student, decode and evaluate. Built-in tasks need no downloads.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    ap.commands = sub.choices  # command name -> its parser (to tell which flags were typed)

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
    p.add_argument("--corpus", help="language models without --data: the text file to train on (default: "
                                    "Python's own help texts)")
    p.add_argument("--labelled", choices=["teacher", "student"], default="teacher",
                   help="built-in data-to-text task: the large teacher split (default) or the small "
                        "student split")
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
    p.add_argument("--preset", help="student preset (default: d2t-student for an encoder-decoder teacher, "
                                     "lm-student for a decoder-only one)")
    p.add_argument("--student", metavar="NAME_OR_PATH",
                   help="a Hugging Face student (name or folder) instead of --preset; --out is then a folder")
    p.add_argument("--out", required=True, help="where to save the student (.safetensors)")
    p.add_argument("--transfer", type=int, default=6000,
                   help="built-in data-to-text task with --teacher: unlabelled inputs labelled by the teacher")
    p.add_argument("--sequence-level", action="store_true",
                   help="encoder-decoder teacher: train on its beam-search outputs for the inputs instead "
                        "of the references (Kim & Rush 2016)")
    p.add_argument("--corpus", help="language models without --data: the text file to distil on")
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
    p.add_argument("--beam-size", type=int, default=4, help="with --method beam (default 4)")
    p.add_argument("--temperature", type=float, default=1.0, help="with --method sample (default 1)")
    p.add_argument("--top-k", type=int, help="with --method sample")
    p.add_argument("--top-p", type=float, help="with --method sample")
    p.add_argument("--max-new-tokens", type=int, default=80)
    p.add_argument("--seed", type=int, default=0, help="with --method sample (default 0)")

    p = sub.add_parser("evaluate", help="score a saved model on the built-in task",
                       description="d2t models: BLEU, slot error rate, perplexity, tokens/s on the test "
                                   "split; LM models: held-out perplexity. Prints JSON on stdout; the "
                                   "progress bar goes to stderr.")
    p.add_argument("--model", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--split", choices=["valid", "test"], default="test", help="data-to-text models")
    p.add_argument("--corpus", help="language models: the text file whose last 10%% is scored")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    def show_warning(message, category, filename, lineno, file=None, line=None):
        print(f"distilkit {args.command}: warning: {flag_message(str(message))}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning  # one plain line on stderr, not a source location
            from .inputs import check_early, typed_flags

            args.typed = typed_flags(parser.commands[args.command], sys.argv[1:] if argv is None else argv)
            check_early(args)
            from .commands import COMMANDS

            return COMMANDS[args.command](args)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as exc:
        print(f"distilkit {args.command}: error: {flag_message(str(exc))}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
