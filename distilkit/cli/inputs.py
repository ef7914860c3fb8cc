"""Flags -> models, data and configs, decided once for the built-in tasks and the user's data.

Every command that trains reads its inputs here: which teacher (a distilkit checkpoint, a shipped
name, a Hugging Face model or a teacher cache), which student (a preset or a model), which
examples (``--data`` or the built-in data of the model's kind) and which configs. And here is
the rule that keeps the command line honest: a flag the user typed that does not apply to the
chosen model or data is refused with an error naming it (:func:`refuse`), never ignored.

The same ``--data``, ``--block-size`` and tokenizer give the same examples, in the same order, in
``cache-teacher`` and ``distill --cache``; the cache refuses anything else.
"""

from __future__ import annotations

import difflib
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, List, Optional, Sequence, Tuple

from .flags import flag_message

TOKENIZER_DIR = "tokenizer"
DISTILKIT_TOKENIZER = "distilkit-tokenizer.json"
DEFAULT_STUDENT = {"seq2seq": "d2t-student", "lm": "lm-student"}
MIN_EXAMPLES_FOR_VALID = 20  # --data with fewer examples holds none out for validation


# ============================================================================ which flags were typed
def typed_flags(parser, argv: Sequence[str]) -> set:
    """The destinations (``"sequence_level"``, ...) of the options typed in ``argv`` for the command
    whose ``parser`` is given -- what the user asked for, as opposed to defaults. Abbreviations
    are resolved as argparse resolves them (a unique prefix)."""
    options = {s: a.dest for a in parser._actions for s in a.option_strings}
    typed = set()
    for token in argv:
        if not token.startswith("--") or token == "--":
            continue
        name = token.split("=", 1)[0]
        if name in options:
            typed.add(options[name])
            continue
        matches = {options[s] for s in options if s.startswith(name)}
        if len(matches) == 1:
            typed |= matches
    return typed


def refuse(args, flags: Iterable[str], why: str) -> None:
    """Raise if the user typed one of ``flags`` (destinations): it would be ignored, ``why``."""
    typed = getattr(args, "typed", set())
    for dest in flags:
        if dest in typed:
            raise ValueError(f"--{dest.replace('_', '-')} does not apply {why}")


# ============================================================================ argument checks
def checkpoint_file(value: str, flag: str) -> Path:
    """The file behind ``--model``/``--teacher``: a path, or the name of a shipped checkpoint."""
    from ..experiments import checkpoint_path, shipped_checkpoints

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


def check_output(value: str, flag: str, folder: bool = False) -> None:
    """Refuse an output path that cannot be written, before any work is done. ``folder``: the
    output is a folder (a Hugging Face model, a cache)."""
    path = Path(value)
    if folder:
        if path.exists() and not path.is_dir():
            raise ValueError(f"{flag} {value}: is a file; a Hugging Face model is saved into a folder")
        if not path.parent.is_dir():
            raise ValueError(f"{flag} {value}: folder {path.parent} does not exist")
        return
    if path.is_dir():
        raise ValueError(f"{flag} {value}: is a folder; give a file path")
    if not path.parent.is_dir():
        raise ValueError(f"{flag} {value}: folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"{flag} {value}: cannot write there (permission denied)")


def check_early(args) -> None:
    """Refuse a bad --device or --preset before minutes of data generation and training."""
    if getattr(args, "device", None) is not None:
        from ..training import resolve_device

        try:
            resolve_device(args.device)
        except ValueError as exc:
            message = flag_message(str(exc))
            raise ValueError(message if message.startswith("--device") else f"--device: {message}") from None
    if getattr(args, "preset", None) is not None:
        from ..models import PRESETS

        if args.preset not in PRESETS:
            raise ValueError(f"--preset must be one of {', '.join(PRESETS)}; got {args.preset!r}")
    if getattr(args, "transfer", 0) < 0:
        raise ValueError(f"--transfer must be an int >= 0, got {args.transfer}")


def train_config(args, desc: str):
    from ..training import TrainConfig

    return TrainConfig(steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
                       seed=args.seed, device=args.device, checkpoint_dir=args.checkpoint_dir,
                       progress=not args.no_progress, restore_best=True, desc=desc, max_length=args.max_length)


def kd_config(args):
    from ..training import KDConfig

    return KDConfig(temperature=args.temperature, alpha=args.alpha, divergence=args.divergence, beta=args.beta)


# ============================================================================ models
def is_hf_spec(value: str) -> bool:
    """A folder or a name that is not a distilkit checkpoint file or shipped checkpoint."""
    from ..experiments import shipped_checkpoints

    p = Path(value)
    if p.is_dir():
        return True
    if p.is_file() or value in shipped_checkpoints():
        return False
    if p.suffix == ".safetensors" or difflib.get_close_matches(value, shipped_checkpoints(), n=1, cutoff=0.8):
        return False  # a missing checkpoint file or a misspelt shipped name: say so, don't ask the hub
    return True


def load(value: str, flag: str) -> Tuple[Any, Any]:
    """``(model, tokenizer)`` from a distilkit checkpoint / shipped name or a HF name / folder."""
    if is_hf_spec(value):
        from ..userdata import load_pretrained

        try:
            return load_pretrained(value)
        except (FileNotFoundError, ImportError) as exc:
            from ..experiments import shipped_checkpoints

            raise type(exc)(f"{flag} {exc}; nor is it a shipped checkpoint (shipped: "
                            f"{', '.join(shipped_checkpoints())})") from None
    from ..checkpoint import load_model

    model, tok, _ = load_model(checkpoint_file(value, flag))
    if tok is None:
        raise ValueError(f"{flag} {value} has no tokenizer stored; save it with save_model(..., tokenizer)")
    return model, tok


def kind_of(model) -> str:
    from ..adapters import adapt

    return adapt(model).kind


def preset_kind(preset: str) -> str:
    from ..models import PRESETS

    return "lm" if PRESETS[preset][0].__name__ == "TransformerConfig" else "seq2seq"


def tokenizer_from_data(path: str, kind: str):
    """A distilkit tokenizer built from the user's file (characters for text, words for JSONL)."""
    from ..data import CharTokenizer, WordTokenizer
    from ..userdata import check_format, read_jsonl_pairs, read_text_file

    check_format(path, kind)
    if kind == "lm":
        return CharTokenizer.from_texts([read_text_file(path)])
    return WordTokenizer.from_texts([t for pair in read_jsonl_pairs(path) for t in pair])


def builtin_tokenizer(args, kind: str):
    """The tokenizer a preset gets without --data: the task's words, or the corpus's characters."""
    if kind == "lm":
        from ..data import CharTokenizer, load_text_corpus

        return CharTokenizer.from_texts([load_text_corpus(args.corpus)])
    from ..data import make_data_to_text

    return make_data_to_text().tokenizer


def student_model(args, kind: str, vocab: int):
    """``--student`` (a model) or ``--preset`` (default by the teacher's kind), refusing a mismatch."""
    from ..models import make_model

    if args.student:
        refuse(args, ["preset"], "with --student (the student is that model)")
        student, _ = load(args.student, "--student")
        if kind_of(student) != kind:
            raise ValueError(f"--student is a {kind_of(student)!r} model but the teacher is a {kind!r} model")
        return student
    preset = args.preset or DEFAULT_STUDENT[kind]
    if preset_kind(preset) != kind:
        raise ValueError(f"--preset {preset} is a {preset_kind(preset)!r} model but the teacher is a {kind!r} "
                         "model; pick a matching preset or --student")
    return make_model(preset, vocab)


def cache_tokenizer(cache_dir: Path):
    from ..data import load_tokenizer

    folder = cache_dir / TOKENIZER_DIR
    if (folder / DISTILKIT_TOKENIZER).is_file():
        return load_tokenizer(folder / DISTILKIT_TOKENIZER)
    if folder.is_dir():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder)
    raise FileNotFoundError(f"--cache {cache_dir}: no {TOKENIZER_DIR}/ folder; write the cache with "
                            "`distilkit cache-teacher`, which stores the teacher's tokenizer with it")


# ============================================================================ examples
@dataclass
class Examples:
    """What a command trains on: ``train`` and ``valid`` examples (``valid`` may be ``None``), and
    where they came from (for the JSON summary)."""

    train: List
    valid: Optional[List]
    source: str


def examples(args, tok, kind: str, teacher=None) -> Examples:
    """The examples for a model of ``kind`` with tokenizer ``tok``: ``--data`` if given, else the
    built-in data of that kind. ``teacher`` (a live model, ``distill`` only) labels the built-in
    task's transfer inputs (``--transfer``) or, with ``--sequence-level``, replaces the targets
    with its beam-search outputs. Refuses every typed flag that would not be used."""
    if kind == "lm":
        refuse(args, ["labelled"], "to a language model (it splits the built-in data-to-text task)")
        refuse(args, ["transfer", "sequence_level"], "to a language model (they are data-to-text recipes)")
    else:
        refuse(args, ["corpus"], "to an encoder-decoder model (it is the text of a language model)")
        refuse(args, ["block_size"], "to an encoder-decoder model (it is a language model's window)")
    if args.data:
        refuse(args, ["labelled", "corpus"], "with --data (your file is the data)")
        refuse(args, ["transfer"], "with --data (your file holds no unlabelled inputs)")
        from ..userdata import load_user_examples, split_off_valid

        loaded = load_user_examples(args.data, tok, kind, args.block_size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # said below, in the command line's words
            train, valid = split_off_valid(loaded, min_train=MIN_EXAMPLES_FOR_VALID)
        if valid is None:
            warnings.warn(f"--data {args.data}: {len(train)} example(s), fewer than {MIN_EXAMPLES_FOR_VALID}: "
                          "none is held out for validation, so the run reports no validation loss and keeps "
                          "its last weights; give more lines to get one", stacklevel=2)
        if kind == "seq2seq" and getattr(args, "sequence_level", False):
            train = _teacher_outputs(teacher, [src for src, _ in train], args)
        return Examples(train, valid, str(args.data))
    if kind == "lm":
        from ..data import load_text_corpus
        from ..userdata import encode_lm_text

        text = load_text_corpus(args.corpus)
        split = int(0.9 * len(text))
        where = f"--corpus {args.corpus}" if args.corpus else "the built-in corpus"
        return Examples(encode_lm_text(text[:split], tok, args.block_size, path=where),
                        encode_lm_text(text[split:], tok, args.block_size, path=where,
                                       first_line=text.count("\n", 0, split) + 1)[:200],
                        args.corpus or "built-in corpus")
    return _data_to_text(args, tok, teacher)


def _data_to_text(args, tok, teacher) -> Examples:
    """The built-in data-to-text task: the labelled split (``--labelled`` for ``train``), plus, when
    a live teacher distils, ``--transfer`` inputs it labels (or, with ``--sequence-level``, its
    beam-search outputs for every input in place of the references)."""
    from ..data import linearize_mr, make_data_to_text
    from ..userdata import encode_text, encode_text_pairs

    data = make_data_to_text()
    own = tok == data.tokenizer  # the task's word tokenizer: its own encoding, else the text's
    pairs = data.teacher_train if getattr(args, "labelled", "teacher") == "teacher" and args.command == "train" \
        else data.train

    def encode_pairs(items):
        if own:
            return data.encode_pairs(items, unknown="error")
        return encode_text_pairs([(linearize_mr(mr), t) for mr, t in items], tok)

    def encode_inputs(mrs):
        return data.encode_inputs(mrs) if own else [encode_text(tok, linearize_mr(mr)) for mr in mrs]

    valid = encode_pairs(data.valid)
    if teacher is None:
        return Examples(encode_pairs(pairs), valid, "built-in data-to-text task")
    transfer = data.transfer[: args.transfer]
    if args.sequence_level:
        train = _teacher_outputs(teacher, encode_inputs([m for m, _ in pairs] + transfer), args)
    else:
        train = encode_pairs(pairs) + _teacher_outputs(teacher, encode_inputs(transfer), args, method="greedy")
    return Examples(train, valid, "built-in data-to-text task")


def _teacher_outputs(teacher, inputs, args, method: str = "beam"):
    from ..training import sequence_level_data

    if teacher is None or not inputs:
        return []
    return sequence_level_data(teacher, inputs, method=method, progress=not args.no_progress)


# ============================================================================ the summary
def json_loss(value: float, valid) -> dict:
    """``best_valid_loss`` as valid JSON: a number, or ``null`` with the reason (never NaN)."""
    if valid is None:
        return {"best_valid_loss": None,
                "best_valid_loss_note": f"nothing was held out: fewer than {MIN_EXAMPLES_FOR_VALID} examples "
                                         "(validation needs more)"}
    if value is None or not math.isfinite(value):
        return {"best_valid_loss": None, "best_valid_loss_note": "no validation loss was computed"}
    return {"best_valid_loss": value}
