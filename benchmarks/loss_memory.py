"""Peak memory and time of the distillation loss: full logits vs the chunked loss.

    python benchmarks/loss_memory.py                       # defaults: 8k tokens, vocab 32k, hidden 512
    python benchmarks/loss_memory.py --tokens 2048 --vocab 8192 --hidden 256 --json

Each variant runs forward + backward in a fresh subprocess; the figure is the growth of the
process's peak resident memory (ru_maxrss) over its baseline after the inputs are made.
"""
import argparse
import json
import resource
import subprocess
import sys
import time


def run_one(variant: str, tokens: int, vocab: int, hidden: int, chunk: int) -> dict:
    import torch

    import distilkit as dk

    torch.manual_seed(0)
    torch.set_num_threads(1)
    hs = torch.randn(tokens, hidden, requires_grad=True)
    ws = (torch.randn(vocab, hidden) * hidden**-0.5).requires_grad_(True)
    ht, wt = torch.randn(tokens, hidden), torch.randn(vocab, hidden) * hidden**-0.5
    labels = torch.randint(0, vocab, (tokens,))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    if variant == "full":
        loss = dk.distillation_loss(hs @ ws.T, ht @ wt.T, labels)
    else:
        loss = dk.chunked_distillation_loss(hs, ws, ht, wt, labels, chunk_size=chunk)
    loss.backward()
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"variant": variant, "loss": round(float(loss), 6), "peak_mib": round((peak - base) / 1024, 1),
            "seconds": round(seconds, 2), "grad_norm": round(float(hs.grad.norm()), 6)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--variant", choices=["full", "chunked"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.variant:
        print(json.dumps(run_one(a.variant, a.tokens, a.vocab, a.hidden, a.chunk)))
        return
    rows = []
    for v in ("full", "chunked"):
        out = subprocess.run([sys.executable, __file__, "--variant", v, "--tokens", str(a.tokens),
                              "--vocab", str(a.vocab), "--hidden", str(a.hidden), "--chunk", str(a.chunk)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    logits_mib = a.tokens * a.vocab * 4 / 2**20
    result = {"tokens": a.tokens, "vocab": a.vocab, "hidden": a.hidden, "chunk": a.chunk,
              "one_logits_tensor_mib": round(logits_mib, 1), "rows": rows,
              "memory_ratio": round(rows[0]["peak_mib"] / max(rows[1]["peak_mib"], 1e-9), 2),
              "same_loss": abs(rows[0]["loss"] - rows[1]["loss"]) < 1e-4}
    if a.json:
        print(json.dumps(result))
        return
    print(f"tokens={a.tokens} vocab={a.vocab} hidden={a.hidden} chunk={a.chunk}; "
          f"one fp32 logits tensor = {logits_mib:.0f} MiB")
    for r in rows:
        print(f"  {r['variant']:<8} peak +{r['peak_mib']:>8.1f} MiB  {r['seconds']:>6.2f} s  loss {r['loss']:.6f}")
    print(f"  memory ratio full/chunked: {result['memory_ratio']}x; same loss: {result['same_loss']}")


if __name__ == "__main__":
    main()
