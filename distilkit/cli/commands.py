"""One function per command. Each reads its inputs through :mod:`.inputs` (one path for the
built-in tasks and the user's data alike) and prints its result as one line of JSON (``demo``
and ``generate`` print text)."""

from __future__ import annotations

import json
from pathlib import Path

from .inputs import (
    DISTILKIT_TOKENIZER,
    TOKENIZER_DIR,
    builtin_tokenizer,
    cache_tokenizer,
    check_output,
    checkpoint_file,
    examples,
    is_hf_spec,
    json_loss,
    kd_config,
    kind_of,
    load,
    preset_kind,
    refuse,
    student_model,
    tokenizer_from_data,
    train_config,
)

__all__ = ["COMMANDS"]


def demo(args) -> int:
    from ..experiments import run_demo
    from ..training import TrainConfig

    kd = kd_config(args)
    TrainConfig(steps=args.steps, device=args.device)  # the demo's own config: refuse a bad --steps now
    teacher = checkpoint_file(args.teacher, "--teacher") if args.teacher else None
    if args.json:
        check_output(args.json, "--json")
    res = run_demo(seed=args.seed, steps=args.steps, num_transfer=args.transfer, kd=kd,
                   teacher_path=teacher, device=args.device, progress=not args.no_progress)
    print()
    print(res.table())
    b, s = res.models["baseline"], res.models["student"]
    setup = res.setup
    print(f"\nbudget: each student {setup['steps']} steps of {setup['batch_size']} examples; the baseline reads the "
          f"{setup['labelled_pairs']} labelled pairs, the student those + {setup['transfer_inputs']} inputs the "
          f"teacher labelled")
    print(f"distilled vs baseline: BLEU {s['bleu'] - b['bleu']:+.2f}, "
          f"SER {100 * (s['slot_error_rate'] - b['slot_error_rate']):+.2f} percentage points")
    if args.json:
        from ..checkpoint import atomic_write_bytes

        atomic_write_bytes(args.json, json.dumps(res.to_json(), indent=2).encode())
        print(f"wrote {args.json}")
    return 0


def _save(model, tok, out: str, extra: dict) -> None:
    from ..adapters import save_pretrained

    save_pretrained(model, out, tok, extra=extra)  # a folder for HF models, a file for distilkit's


def train(args) -> int:
    """``distilkit train``: a preset (built-in data or --data) or a model (--model) on hard labels."""
    from ..models import count_parameters, make_model
    from ..training import train as train_model

    config = train_config(args, args.model or args.preset)
    if args.model:
        refuse(args, ["preset"], "with --model (the model to train is that one)")
        model, tok = load(args.model, "--model")
        kind = kind_of(model)
        check_output(args.out, "--out", folder=is_hf_spec(args.model))
    else:
        check_output(args.out, "--out")
        kind = preset_kind(args.preset)
        tok = tokenizer_from_data(args.data, kind) if args.data else builtin_tokenizer(args, kind)
        model = make_model(args.preset, len(tok))
    ex = examples(args, tok, kind)
    hist = train_model(model, ex.train, config=config, valid_examples=ex.valid)
    _save(model, tok, args.out, {"history": hist.to_dict(), "data": ex.source})
    print(json.dumps({"params": count_parameters(model), "train_examples": len(ex.train),
                      **json_loss(hist.best_valid_loss, ex.valid), "out": args.out}))
    return 0


def distill(args) -> int:
    """``distilkit distill``: a teacher (or a cache of one) into a student, on either data."""
    from ..models import count_parameters
    from ..training import HardLabels, TeacherLogits
    from ..training import train as train_model

    if not args.teacher and not args.cache:
        raise ValueError("--teacher or --cache is required")
    if args.teacher and args.cache:
        raise ValueError("give --teacher or --cache, not both (a cache replaces the teacher)")
    kd, config = kd_config(args), train_config(args, "distil")
    if args.cache:
        from ..cache import load_teacher_cache
        from ..training import CacheTargets

        refuse(args, ["transfer", "sequence_level"], "with --cache (there is no teacher to decode inputs)")
        cache = load_teacher_cache(args.cache)
        tok, teacher = cache_tokenizer(Path(args.cache)), None
        kind, vocab, teacher_params = cache.manifest["kind"], cache.vocab_size, None
        if "temperature" not in args.typed:
            kd.temperature = cache.temperature  # the default follows the cache
    else:
        teacher, tok = load(args.teacher, "--teacher")
        kind, vocab, teacher_params = kind_of(teacher), None, count_parameters(teacher)
        from ..adapters import adapt

        vocab = adapt(teacher).vocab_size
    if args.sequence_level:
        refuse(args, ["temperature", "alpha", "divergence", "beta"],
               "with --sequence-level (the student trains on the teacher's outputs with hard labels)")
    student = student_model(args, kind, vocab)
    check_output(args.out, "--out", folder=bool(args.student) and is_hf_spec(args.student))
    ex = examples(args, tok, kind, teacher=teacher)
    if args.cache:
        targets = CacheTargets(cache, kd)
    elif args.sequence_level:
        targets = HardLabels()
    else:
        targets = TeacherLogits(teacher, kd)
    hist = train_model(student, ex.train, config=config, targets=targets, valid_examples=ex.valid)
    _save(student, tok, args.out, {"history": hist.to_dict(), "teacher": args.teacher or f"cache {args.cache}",
                                   "data": ex.source})
    print(json.dumps({"params": count_parameters(student), "teacher_params": teacher_params,
                      "train_examples": len(ex.train), **json_loss(hist.best_valid_loss, ex.valid),
                      "out": args.out}))
    return 0


def cache_teacher(args) -> int:
    """``distilkit cache-teacher``: run the teacher once over the data, store its top-k."""
    from ..cache import cache_teacher_logits
    from ..training import resolve_device

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {args.out}: is a file; the cache is a folder")
    device = resolve_device(args.device)
    teacher, tok = load(args.teacher, "--teacher")
    args.corpus = None  # cache-teacher has no --corpus: the built-in corpus, as `distill --cache` reads it
    ex = examples(args, tok, kind_of(teacher))
    teacher.to(device)
    try:
        cache = cache_teacher_logits(teacher, ex.train, out, top_k=args.top_k, temperature=args.temperature,
                                     batch_size=args.batch_size, teacher_name=args.teacher,
                                     progress=not args.no_progress, max_length=args.max_length)
    except ValueError as exc:
        msg = str(exc)
        for name, flag in (("top_k", "--top-k"), ("batch_size", "--batch-size"), ("max_length", "--max-length")):
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


def generate(args) -> int:
    model_path = checkpoint_file(args.model, "--model")
    import torch

    from ..checkpoint import load_model
    from ..decoding import generate as decode

    model, tok, _ = load_model(model_path)
    if tok is None:
        raise ValueError(f"--model {args.model} has no tokenizer stored")
    kind = kind_of(model)
    flag = "--mr" if kind == "seq2seq" else "--prompt"
    text = args.mr if kind == "seq2seq" else args.prompt
    refuse(args, ["prompt" if kind == "seq2seq" else "mr"], f"to this {kind} model (it reads {flag})")
    if args.method != "beam":
        refuse(args, ["beam_size"], f"to --method {args.method} (only to beam)")
    if args.method != "sample":
        refuse(args, ["temperature", "top_k", "top_p", "seed"], f"to --method {args.method} (only to sample)")
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
    out = decode(model, [ids], method=args.method, **kwargs)[0]
    print((text if kind == "lm" else "") + tok.decode(out))
    return 0


def evaluate(args) -> int:
    model_path = checkpoint_file(args.model, "--model")
    from ..checkpoint import load_model
    from ..metrics import perplexity

    model, tok, _ = load_model(model_path)
    if kind_of(model) == "lm":
        refuse(args, ["split"], "to a language model (it scores the last 10% of --corpus)")
        args.block_size, args.data, args.command = 128, None, "evaluate"
        ex = examples(args, tok, "lm")
        print(json.dumps({"perplexity": round(perplexity(model, ex.valid), 3)}))
        return 0
    refuse(args, ["corpus"], "to a data-to-text model (it is scored on the built-in task)")
    from ..data import make_data_to_text
    from ..experiments import evaluate_d2t

    data = make_data_to_text()
    if tok is not None and tok != data.tokenizer:
        raise ValueError(f"--model {args.model} uses a different tokenizer than the built-in task")
    from ..experiments import percent_ser

    res = evaluate_d2t(model, data, args.split, progress=not args.no_progress)
    res.pop("outputs")
    print(json.dumps(percent_ser(res)))  # the slot error rate in percent, as `demo` prints it
    return 0


COMMANDS = {"demo": demo, "train": train, "distill": distill, "cache-teacher": cache_teacher,
            "generate": generate, "evaluate": evaluate}
