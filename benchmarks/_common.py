"""What the experiment scripts in ``benchmarks/`` share: the machine line, the results file
format and its atomic write, and mean / standard deviation over seeds.

Every results file is ``{"command", "machine", "torch", "seeds", "runs": [...], ...}``; one
run is one (method, seed) with its metrics.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"


def machine(threads: int = 1) -> str:
    return (f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs, {platform.system()} "
            f"{platform.release()}, {threads} torch thread(s) per process").replace("  ", " ")


def command() -> str:
    return " ".join(["python", *[a if " " not in a else repr(a) for a in sys.argv]])


def write_results(path: Path, seeds: List[int], runs: List[dict], threads: int = 1, **extra) -> dict:
    """Write the results file atomically (temporary file + rename) and return its content."""
    import torch

    doc = {"command": command(), "machine": machine(threads), "torch": torch.__version__, "seeds": seeds,
           "runs": runs, **extra}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)
    return doc


def update_results(path: Path, **keys) -> dict:
    """Replace some keys of an existing results file (atomically); the rest stays as written."""
    path = Path(path)
    doc = {**json.loads(path.read_text()), **keys}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)
    return doc


def mean_std(values: Iterable[float]) -> Dict[str, float]:
    v = [float(x) for x in values]
    return {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "n": len(v)}


def summarise(runs: List[dict], metric: str, key: str = "method") -> Dict[str, Dict[str, float]]:
    """``{method: {"mean", "std", "n"}}`` of one metric over the seeds of each method."""
    groups: Dict[str, List[float]] = {}
    for r in runs:
        if r.get(metric) is not None:
            groups.setdefault(r[key], []).append(r[metric])
    return {k: mean_std(v) for k, v in groups.items()}


def check(ok: bool, claim: str, problems: List[str]) -> None:
    """Print one direction check of a quick run and remember it when it fails."""
    print(f"  [{'ok' if ok else 'FAILED'}] {claim}")
    if not ok:
        problems.append(claim)


def merge_results(paths, out: Path, metrics, shared=("teacher", "held-out text"), first=("speed",)) -> dict:
    """One results file from several single-seed ones (one process per seed): every seed's runs,
    the seedless ``shared`` methods once, every command, and the set-up, which must agree.
    Keys named in ``first`` are taken from the first file."""
    docs = [json.loads(Path(p).read_text()) for p in paths]
    setups = {json.dumps({k: v for k, v in d["setup"].items() if "seconds" not in k}, sort_keys=True)
              for d in docs}
    if len(setups) != 1:
        raise SystemExit(f"--merge: the files were made with different set-ups: {sorted(setups)}")
    seeds = sorted(s for d in docs for s in d["seeds"])
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"--merge: a seed appears in more than one file: {seeds}")
    runs = [r for d in docs for r in d["runs"] if r["method"] not in shared or r["seed"] is not None]
    runs += [r for r in docs[0]["runs"] if r["method"] in shared and r["seed"] is None]
    runs.sort(key=lambda r: (r["seed"] is not None, r["seed"] or 0))
    extra = {k: docs[0][k] for k in first if k in docs[0]}
    return write_results(out, seeds, runs, summary={m: summarise(runs, m) for m in metrics},
                         setup=docs[0]["setup"], commands=[d["command"] for d in docs], **extra)


def paired_comparisons(runs: List[dict], seeds: List[int], comparisons: List[dict]) -> List[dict]:
    """Each planned comparison (``a``, ``b``, ``metric``, ``higher_is_better``, optionally
    ``margin``) paired by seed with ``distilkit.stats.compare``, unadjusted: the comparison's own
    keys plus the mean difference a - b, its 95% interval, the equivalence p-value where a margin
    is given, the per-seed differences and the verdict."""
    sys.path.insert(0, str(ROOT))
    from distilkit.stats import compare

    def values(method, metric):
        return [next(r[metric] for r in runs if r["method"] == method and r["seed"] == s) for s in seeds]

    out = []
    for c in comparisons:
        res = compare(values(c["a"], c["metric"]), values(c["b"], c["metric"]),
                      higher_is_better=c["higher_is_better"], margin=c.get("margin"))
        row = {**c, "diff": round(res.effect, 5), "low": round(res.low, 5), "high": round(res.high, 5)}
        if c.get("margin") is not None:
            row["p_equivalence"] = round(res.p_equivalence, 5)
        out.append({**row, "per_seed": [round(d, 5) for d in res.per_seed], "verdict": res.verdict})
    return out


def combine_runs(paths, methods: List[str]) -> Tuple[List[dict], List[dict], List[int]]:
    """Runs made in several processes (some seeds, some methods each) as one list. The files'
    set-ups must agree, every (seed, method) must appear once, and every method of ``methods``
    on every seed. Returns (the files' contents, the runs sorted by seed and by the order of
    ``methods``, the seeds)."""
    docs = [json.loads(Path(p).read_text()) for p in paths]
    if len({json.dumps(d["setup"], sort_keys=True) for d in docs}) != 1:
        raise SystemExit("--merge: the files were made with different set-ups")
    runs = [r for d in docs for r in d["runs"]]
    keys = [(r["seed"], r["method"]) for r in runs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise SystemExit(f"--merge: runs that appear twice: {twice[:5]}")
    seeds = sorted({s for s, _ in keys})
    missing = [(s, m) for s in seeds for m in methods if (s, m) not in set(keys)]
    if missing:
        raise SystemExit(f"--merge: missing runs {missing[:5]} ({len(missing)} in all)")
    runs.sort(key=lambda r: (r["seed"], methods.index(r["method"])))
    return docs, runs, seeds


# the data-to-text metrics, as every data-to-text benchmark records them
D2T_METRICS = {"bleu": "corpus BLEU, greedy decoding, 8 references per test input",
               "ser": "slot error rate (%)",
               "repeat": "repeated 4-gram rate: % of outputs that repeat a word 4-gram (0.4% on the references)"}


def kept(path: Optional[Path], make: Callable, key: str = "value") -> Tuple[object, float]:
    """``(make(), seconds it took)``, kept in ``path`` (JSON, written atomically) when a path is
    given, and read back from it by later runs (with the seconds of the run that made it)."""
    if path is not None and path.is_file():
        doc = json.loads(path.read_text())
        return doc[key], doc["seconds"]
    t = time.perf_counter()
    value = make()
    seconds = round(time.perf_counter() - t, 1)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"seconds": seconds, key: value}))
        os.replace(tmp, path)
    return value, seconds
