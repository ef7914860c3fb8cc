"""The command line on the user's own data and models.

``distilkit train`` / ``distill`` / ``cache-teacher`` with ``--data`` (a text file or JSONL
pairs, see :mod:`distilkit.userdata`), Hugging Face models by name or folder (``--model``,
``--teacher``, ``--student``) and a teacher cache (``--cache``). The presets and the shipped
checkpoints work here too; without ``--data`` the built-in data is used (the English corpus
for language models, the labelled data-to-text pairs for encoder-decoder models).

The same ``--data``, ``--block-size`` and tokenizer give the same examples, in the same order,
in ``cache-teacher`` and ``distill --cache``; the cache refuses anything else.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Tuple

__all__ = ["wants_user_path", "train_user", "distill_user", "cache_teacher"]

TOKENIZER_DIR = "tokenizer"
DISTILKIT_TOKENIZER = "distilkit-tokenizer.json"


def _is_hf_spec(value: str) -> bool:
    """A folder or a name that is not a distilkit checkpoint file or shipped checkpoint."""
    from .experiments import shipped_checkpoints

    p = Path(value)
    if p.is_dir():
        return True
    if p.is_file() or value in shipped_checkpoints():
        return False
    if p.suffix == ".safetensors" or difflib.get_close_matches(value, shipped_checkpoints(), n=1, cutoff=0.8):
        return False  # a missing checkpoint file or a misspelt shipped name: say so, don't ask the hub
    return True


def wants_user_path(args) -> bool:
    """Whether ``distill`` runs here (user data, HF models, a cache) or on the built-in recipe."""
    if not args.teacher and not args.cache:
        raise ValueError("--teacher or --cache is required")
    if args.teacher and args.cache:
        raise ValueError("give --teacher or --cache, not both (a cache replaces the teacher)")
    return bool(args.data or args.student or args.cache or _is_hf_spec(args.teacher))


def _load(value: str, flag: str) -> Tuple[Any, Any]:
    """``(model, tokenizer)`` from a distilkit checkpoint / shipped name or a HF name / folder."""
    if _is_hf_spec(value):
        from .userdata import load_pretrained

        try:
            return load_pretrained(value)
        except (FileNotFoundError, ImportError) as exc:
            from .experiments import shipped_checkpoints

            raise type(exc)(f"{flag} {exc}; nor is it a shipped checkpoint (shipped: "
                            f"{', '.join(shipped_checkpoints())})") from None
    from .checkpoint import load_model
    from .cli import _checkpoint

    model, tok, _ = load_model(_checkpoint(value, flag))
    if tok is None:
        raise ValueError(f"{flag} {value} has no tokenizer stored; save it with save_model(..., tokenizer)")
    return model, tok


def _examples(args, tok, kind: str):
    """``(train, valid)`` examples for a model of ``kind`` from ``--data`` or the built-in data."""
    from .userdata import encode_lm_text, encode_text_pairs, load_user_examples, split_off_valid

    if args.data:
        return split_off_valid(load_user_examples(args.data, tok, kind, args.block_size))
    if kind == "lm":
        from .data import load_text_corpus

        text = load_text_corpus(getattr(args, "corpus", None))
        split = int(0.9 * len(text))
        return (encode_lm_text(text[:split], tok, args.block_size),
                encode_lm_text(text[split:], tok, args.block_size)[:200])
    from .data import linearize_mr, make_data_to_text

    data = make_data_to_text()
    pairs = lambda items: [(linearize_mr(mr), t) for mr, t in items]  # noqa: E731
    return encode_text_pairs(pairs(data.train), tok), encode_text_pairs(pairs(data.valid), tok)


def _tokenizer_from_data(path: str, kind: str):
    """A distilkit tokenizer built from the user's file (characters for text, words for JSONL)."""
    from .data import CharTokenizer, WordTokenizer
    from .userdata import check_format, read_jsonl_pairs, read_text_file

    check_format(path, kind)
    if kind == "lm":
        return CharTokenizer.from_texts([read_text_file(path)])
    return WordTokenizer.from_texts([t for pair in read_jsonl_pairs(path) for t in pair])


def _preset_kind(preset: str) -> str:
    from .models import PRESETS

    cls = PRESETS[preset][0].__name__
    return "lm" if cls == "TransformerConfig" else "seq2seq"


def _check_out(args, folder: bool) -> None:
    from .cli import _check_output

    if not folder:
        _check_output(args.out, "--out")
        return
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {args.out}: is a file; a Hugging Face model is saved into a folder")
    if not out.parent.is_dir():
        raise ValueError(f"--out {args.out}: folder {out.parent} does not exist")


def _save(model, tok, args, extra: dict) -> None:
    from .adapters import save_pretrained

    save_pretrained(model, args.out, tok, extra=extra)  # a folder for HF models, a file for distilkit's


def train_user(args) -> int:
    """``distilkit train`` with ``--data`` and/or ``--model``."""
    from .adapters import adapt
    from .cli import _train_config
    from .models import count_parameters, make_model
    from .train import train

    config = _train_config(args, args.model or args.preset)
    if args.model:
        _check_out(args, folder=True)
        model, tok = _load(args.model, "--model")
        kind = adapt(model).kind
    else:
        _check_out(args, folder=False)
        kind = _preset_kind(args.preset)
        tok = _tokenizer_from_data(args.data, kind)
        model = make_model(args.preset, len(tok))
    tr, va = _examples(args, tok, kind)
    hist = train(model, tr, config=config, valid_examples=va)
    _save(model, tok, args, {"history": hist.to_dict(), "data": args.data})
    print(json.dumps({"params": count_parameters(model), "train_examples": len(tr),
                      "best_valid_loss": hist.best_valid_loss, "out": args.out}))
    return 0


def _load_cache_tokenizer(cache_dir: Path):
    from .data import load_tokenizer

    folder = cache_dir / TOKENIZER_DIR
    if (folder / DISTILKIT_TOKENIZER).is_file():
        return load_tokenizer(folder / DISTILKIT_TOKENIZER)
    if folder.is_dir():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder)
    raise FileNotFoundError(f"--cache {cache_dir}: no {TOKENIZER_DIR}/ folder; write the cache with "
                            "`distilkit cache-teacher`, which stores the teacher's tokenizer with it")


def distill_user(args) -> int:
    """``distilkit distill`` with ``--data``, HF models, or ``--cache``."""
    from .adapters import adapt
    from .cache import load_teacher_cache
    from .cli import _kd_config, _train_config
    from .models import count_parameters, make_model
    from .train import distill

    kd, config = _kd_config(args), _train_config(args, "distil")
    _check_out(args, folder=bool(args.student))
    if args.cache:
        source = load_teacher_cache(args.cache)
        tok = _load_cache_tokenizer(Path(args.cache))
        kind, vocab = source.manifest["kind"], source.vocab_size
        if args.temperature == 1.0 and source.temperature != 1.0:
            kd.temperature = source.temperature  # the default follows the cache
    else:
        source, tok = _load(args.teacher, "--teacher")
        adapter = adapt(source)
        kind, vocab = adapter.kind, adapter.vocab_size
    if args.student:
        student, _ = _load(args.student, "--student")
    else:
        if _preset_kind(args.preset) != kind:
            raise ValueError(f"--preset {args.preset} is a {_preset_kind(args.preset)!r} model but the "
                             f"teacher is a {kind!r} model; pick a matching preset or --student")
        student = make_model(args.preset, vocab)
    if adapt(student).kind != kind:
        raise ValueError(f"--student is a {adapt(student).kind!r} model but the teacher is a {kind!r} model")
    tr, va = _examples(args, tok, kind)
    hist = distill(student, source, tr, kd=kd, config=config, valid_examples=va)
    _save(student, tok, args, {"history": hist.to_dict(), "teacher": args.teacher or f"cache {args.cache}",
                               "data": args.data})
    print(json.dumps({"params": count_parameters(student), "train_examples": len(tr),
                      "best_valid_loss": hist.best_valid_loss, "out": args.out}))
    return 0


def cache_teacher(args) -> int:
    """``distilkit cache-teacher``: run the teacher once over the data, store its top-k."""
    from .adapters import adapt
    from .cache import cache_teacher_logits
    from .train import resolve_device

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {args.out}: is a file; the cache is a folder")
    device = resolve_device(args.device)
    teacher, tok = _load(args.teacher, "--teacher")
    kind = adapt(teacher).kind
    tr, _ = _examples(args, tok, kind)
    teacher.to(device)
    try:
        cache = cache_teacher_logits(teacher, tr, out, top_k=args.top_k, temperature=args.temperature,
                                     batch_size=args.batch_size, teacher_name=args.teacher,
                                     progress=not args.no_progress)
    except ValueError as exc:
        msg = str(exc)
        for name, flag in (("top_k", "--top-k"), ("batch_size", "--batch-size")):
            msg = msg.replace(f"{name} must", f"{flag} must")
        raise ValueError(msg) from None
    folder = out / TOKENIZER_DIR
    folder.mkdir(exist_ok=True)
    if hasattr(tok, "save_pretrained"):
        tok.save_pretrained(folder)
    else:
        tok.save(folder / DISTILKIT_TOKENIZER)
    print(json.dumps({"out": str(out), "examples": len(cache), "tokens": cache.num_tokens,
                      "top_k": cache.top_k, "bytes_per_token": round(cache.bytes_per_token, 2)}))
    return 0
