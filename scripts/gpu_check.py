"""CUDA-only checks of distilkit's training loop; run by ``scripts/gpu_check.sh`` (a few minutes).

    python scripts/gpu_check.py                 # on a CUDA machine; writes $OUT/gpu_check.json
    python scripts/gpu_check.py --device cpu    # the same code on the CPU (no autocast, no
                                                # sync counting): checks the script itself

1. training steps, bf16 and fp16 autocast (fp16 with the gradient scaler), both model kinds,
   hard labels and word-level KD: losses finite, logits really in the autocast dtype;
2. host synchronisations per optimizer step, counted by CUDA's sync debug mode
   (``torch.cuda.set_sync_debug_mode("warn")``) over a short and a longer run (the difference
   divided by the extra steps, so start-up does not count);
3. the memory-bounded loss (``linear_distillation_loss``) against the plain one on CUDA: value and
   gradient agreement in one process, peak CUDA memory and time of each in its own process;
4. checkpoint / resume on CUDA (bf16 and fp16: the scaler state too): a run killed mid-way and
   resumed against an uninterrupted one.

Prints a summary; exit status 0 only if every check passed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

import distilkit as dk

ROOT = Path(__file__).resolve().parent.parent
V = 512


def windows(n, seed):
    """Arithmetic sequences of token ids (learnable: the loss falls within a few steps)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        start, stride = rng.randrange(V), rng.randint(1, 3)
        out.append([3 + (start + i * stride) % (V - 3) for i in range(rng.randint(16, 64))])
    return out


def pairs(n, seed):
    """Copy the source (learnable), sources of uneven length."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        src = [rng.randrange(4, V) for _ in range(rng.randint(4, 20))]
        out.append((src, src + [2]))
    return out


SMALL = False  # --device cpu: tiny models and data, to check the script itself quickly


def model(kind, seed, big=False):
    torch.manual_seed(seed)
    if SMALL:
        return (dk.TransformerLM(dk.TransformerConfig(vocab_size=V, d_model=16, n_layers=1, n_heads=2, max_len=128))
                if kind == "lm" else dk.Seq2SeqLSTM(dk.Seq2SeqConfig(vocab_size=V, embed_dim=16, hidden_dim=16)))
    if kind == "lm":
        d, layers = (256, 4) if big else (128, 2)
        return dk.TransformerLM(dk.TransformerConfig(vocab_size=V, d_model=d, n_layers=layers, n_heads=4,
                                                     max_len=128, dropout=0.1))
    e, h = (128, 256) if big else (64, 128)
    return dk.Seq2SeqLSTM(dk.Seq2SeqConfig(vocab_size=V, embed_dim=e, hidden_dim=h, dropout=0.1,
                                           encoder_layers=2 if big else 1, decoder_layers=2 if big else 1))


def examples(kind):
    n = 64 if SMALL else 2048
    return windows(n, 1) if kind == "lm" else pairs(n, 1)


def config(device, dtype, **kw):
    base = dict(steps=20, batch_size=64 if device == "cuda" else 8, lr=1e-2 if SMALL else 3e-3, warmup_steps=2,
                progress=False, device=device, amp=True, amp_dtype=dtype, eval_every=10_000)
    base.update(kw)
    return dk.TrainConfig(**base)


def targets(kind, kd, device):
    return dk.TeacherLogits(model(kind, 99, big=True).to(device), dk.KDConfig(alpha=0.5, temperature=2.0)) \
        if kd else None


# ---------------------------------------------------------------------------- 1. training steps
def check_training(device):
    loop = importlib.import_module("distilkit.training.loop")
    rows = []
    for kind in ("lm", "seq2seq"):
        for dtype in ("bfloat16", "float16"):
            for kd in (False, True):
                student = model(kind, 0)
                cfg = config(device, dtype, steps=40 if device == "cuda" else 20)
                # the logits' dtype under the loop's autocast
                batch = loop.default_collate(student)(examples(kind)[:8]).to(device)
                with torch.no_grad(), loop._autocast(torch.device(device), cfg):
                    logit_dtype = str(student.to(device)(batch).dtype).replace("torch.", "")
                scaler = loop._grad_scaler(torch.device(device), cfg)
                t = time.perf_counter()
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                hist = dk.train(student, examples(kind), config=cfg, targets=targets(kind, kd, device))
                if device == "cuda":
                    torch.cuda.synchronize()
                row = {"kind": kind, "amp_dtype": dtype, "targets": "kd" if kd else "hard",
                       "logits_dtype": logit_dtype, "scaler": scaler is not None,
                       "seconds": round(time.perf_counter() - t, 2),
                       "first_loss": round(hist.train_loss[0], 4), "last_loss": round(hist.train_loss[-1], 4),
                       "skipped_steps": hist.skipped_step,
                       "peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device == "cuda" else None}
                ok = all(x == x and abs(x) < 1e6 for x in hist.train_loss) and \
                    hist.train_loss[-1] < hist.train_loss[0] and len(hist.skipped_step) < 10
                if device == "cuda":
                    ok = ok and logit_dtype == dtype and row["scaler"] == (dtype == "float16")
                row["ok"] = bool(ok)
                rows.append(row)
                print("train", json.dumps(row), flush=True)
    return rows


# ---------------------------------------------------------------------------- 2. syncs per step
def count_syncs(fn, *args, **kwargs):
    """Run ``fn(*args, **kwargs)`` with CUDA's sync debug mode on; returns how many
    synchronising calls it warned about, and where."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught), \
        sorted({str(w.filename) + ":" + str(w.lineno) for w in caught if "synchroniz" in str(w.message)})


def check_syncs(device):
    if device != "cuda":
        return [{"skipped": "sync counting needs CUDA"}]
    rows = []
    short, long = 3, 13
    for kind in ("lm", "seq2seq"):
        for dtype in ("bfloat16", "float16"):
            for kd, accum in ((False, 1), (True, 2)):
                counts, where = [], set()
                # warm-up: one-time CUDA set-up (handles, kernels) must not land in one run only
                dk.train(model(kind, 0), examples(kind), config=config(device, dtype, steps=short,
                                                                       grad_accum=accum),
                         targets=targets(kind, kd, device))
                for steps in (short, long):
                    student = model(kind, 0)
                    tg = targets(kind, kd, device)
                    cfg = config(device, dtype, steps=steps, grad_accum=accum)
                    n, w = count_syncs(dk.train, student, examples(kind), config=cfg, targets=tg)
                    counts.append(n)
                    where.update(w)
                per_step = (counts[1] - counts[0]) / (long - short)
                row = {"kind": kind, "amp_dtype": dtype, "targets": "kd" if kd else "hard", "grad_accum": accum,
                       "syncs_per_step": per_step, "ok": per_step <= 1, "sites": sorted(where)[:12]}
                rows.append(row)
                print("syncs", json.dumps(row), flush=True)
    return rows


# ---------------------------------------------------------------------------- 3. chunked loss
def _loss_case(device, tokens, vocab, hidden, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    h = (torch.randn(tokens, hidden, generator=g) * 0.5).to(device).requires_grad_()
    w = (torch.randn(vocab, hidden, generator=g) / hidden**0.5).to(device).requires_grad_()
    th = (torch.randn(tokens, hidden, generator=g) * 0.5).to(device)
    tw = (torch.randn(vocab, hidden, generator=g) / hidden**0.5).to(device)
    labels = torch.randint(0, vocab, (tokens,), generator=g).to(device)
    return h, w, th, tw, labels


def _run_loss(variant, device, tokens, vocab, hidden):
    h, w, th, tw, labels = _loss_case(device, tokens, vocab, hidden)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t = time.perf_counter()
    if variant == "plain":
        loss = dk.distillation_loss(h @ w.T, th @ tw.T, labels, alpha=0.5, check_values=False)
    else:
        loss = dk.losses.linear_distillation_loss(h, w, None, (th, tw, None), labels, alpha=0.5,
                                                  check_values=False)
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
    out = {"variant": variant, "seconds": time.perf_counter() - t, "value": float(loss.detach())}
    if device == "cuda":
        out["peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    return out, h.grad, w.grad


def check_chunked_loss(device, tokens, vocab, hidden):
    if not hasattr(dk.losses, "linear_distillation_loss"):
        return [{"skipped": "distilkit.losses has no linear_distillation_loss"}]
    _, gh_p, gw_p = _run_loss("plain", device, tokens, vocab, hidden)
    out, gh_c, gw_c = _run_loss("chunked", device, tokens, vocab, hidden)
    plain, _, _ = _run_loss("plain", device, tokens, vocab, hidden)
    agree = {"value_diff": abs(out["value"] - plain["value"]),
             "grad_hidden_max_diff": float((gh_p - gh_c).abs().max()),
             "grad_weight_max_diff": float((gw_p - gw_c).abs().max()),
             "grad_hidden_max": float(gh_p.abs().max())}
    del gh_p, gw_p, gh_c, gw_c
    rows = [agree]
    for variant in ("plain", "chunked"):  # memory and time: each in its own process
        cmd = [sys.executable, __file__, "--loss-variant", variant, "--device", device,
               "--tokens", str(tokens), "--vocab", str(vocab), "--hidden", str(hidden)]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if res.returncode:
            rows.append({"variant": variant, "error": res.stderr[-2000:]})
        else:
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    mem = {r["variant"]: r for r in rows[1:] if "variant" in r and "peak_mib" in r}
    if len(mem) == 2:
        agree["memory_ratio"] = mem["chunked"]["peak_mib"] / mem["plain"]["peak_mib"]
        agree["time_ratio"] = mem["chunked"]["seconds"] / mem["plain"]["seconds"]
    scale = max(agree["grad_hidden_max"], 1e-12)
    agree["ok"] = agree["value_diff"] < 1e-3 * max(1.0, abs(plain["value"])) and \
        agree["grad_hidden_max_diff"] < 1e-3 * scale and not any("error" in r for r in rows[1:])
    for r in rows:
        print("loss", json.dumps(r), flush=True)
    return rows


# ---------------------------------------------------------------------------- 4. checkpoint / resume
class _Stop(Exception):
    pass


class _StopAt(dk.HardLabels):
    def __init__(self, at):
        self.at, self.calls = at, 0

    def __call__(self, batch, student):
        self.calls += 1
        if self.calls == self.at:
            raise _Stop()
        return super().__call__(batch, student)


def check_resume(device):
    rows = []
    for kind in ("lm", "seq2seq"):
        for dtype in ("bfloat16", "float16"):
            with tempfile.TemporaryDirectory() as tmp:
                def cfg(folder, dtype=dtype, tmp=tmp):
                    return config(device, dtype, steps=12, checkpoint_dir=str(Path(tmp) / folder),
                                  checkpoint_every=4, seed=5)

                a = model(kind, 0)
                ha = dk.train(a, examples(kind), config=cfg("a"))
                b = model(kind, 0)
                try:
                    dk.train(b, examples(kind), config=cfg("b"), targets=_StopAt(10))
                except _Stop:
                    pass
                b = model(kind, 7)
                hb = dk.train(b, examples(kind), config=cfg("b"))
                sa, sb = a.state_dict(), b.state_dict()
                diff = max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)
                bitwise = all(torch.equal(sa[k], sb[k]) for k in sa)
                row = {"kind": kind, "amp_dtype": dtype, "bitwise_equal": bitwise, "max_weight_diff": diff,
                       "same_skipped_steps": ha.skipped_step == hb.skipped_step,
                       "loss_diff_last": abs(ha.train_loss[-1] - hb.train_loss[-1]),
                       "ok": diff < 1e-3 and ha.skipped_step == hb.skipped_step}
                rows.append(row)
                print("resume", json.dumps(row), flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cpu: run the same code on the CPU with small batches, to check the script")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--loss-variant", choices=["plain", "chunked"], help=argparse.SUPPRESS)
    ap.add_argument("--only", nargs="*", default=["train", "syncs", "loss", "resume"])
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; these checks need one (nothing was run). "
              "Use --device cpu to check the script itself.", file=sys.stderr)
        return 2
    if args.loss_variant:  # child process: one loss variant, memory and time
        out, _, _ = _run_loss(args.loss_variant, args.device, args.tokens, args.vocab, args.hidden)
        print(json.dumps(out))
        return 0
    if args.device == "cpu":
        global SMALL
        SMALL = True
        torch.set_num_threads(min(4, os.cpu_count() or 1))
    results = {"device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
               "torch": torch.__version__}
    t0 = time.perf_counter()
    checks = {"train": lambda: check_training(args.device), "syncs": lambda: check_syncs(args.device),
              "loss": lambda: check_chunked_loss(args.device, args.tokens, args.vocab, args.hidden),
              "resume": lambda: check_resume(args.device)}
    for name in args.only:
        try:
            results[name] = checks[name]()
        except Exception as exc:  # report and go on with the other checks
            results[name] = [{"error": f"{type(exc).__name__}: {exc}", "ok": False}]
            print(name, "ERROR", results[name][0]["error"], flush=True)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    failed = [f"{name}: {json.dumps(r)}" for name in args.only for r in results[name]
              if isinstance(r, dict) and r.get("ok") is False]
    out = Path(os.environ.get("OUT", ".")) / "gpu_check.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"\n== gpu_check summary ({results['device']}, {results['seconds']} s) ==")
    for name in args.only:
        oks = [r.get("ok") for r in results[name] if isinstance(r, dict) and "ok" in r]
        print(f"  {name:7s} {sum(bool(o) for o in oks)}/{len(oks)} ok")
    for line in failed:
        print("  FAILED", line)
    print(f"results: {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
