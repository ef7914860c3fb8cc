"""The rule the book's conclusions follow (``distilkit.notebook.compare``, defined in
``distilkit.stats``: a paired t interval over seeds) and the results files the chapters read
(``load_results``). ``tests/test_stats.py`` tests the rule itself and its error rates."""

import json

import pytest

from distilkit.notebook import compare, load_results, metric_by_method


def test_an_interval_that_excludes_zero_gives_a_verdict():
    c = compare([80.0, 75.8, 80.8], [54.2, 58.7, 61.9])
    assert c.verdict == "A better" and c.low > 0
    assert c.effect == pytest.approx((80.0 + 75.8 + 80.8 - 54.2 - 58.7 - 61.9) / 3)
    assert c.per_seed == pytest.approx([25.8, 17.1, 18.9])


def test_an_interval_that_holds_zero_is_inconclusive():
    # chapter 4's old experiment A: +4.3, +0.1, -1.6 BLEU over the baseline
    c = compare([58.5, 58.8, 60.3], [54.2, 58.7, 61.9])
    assert c.low < 0 < c.high and c.verdict == "inconclusive"


def test_one_seed_that_disagrees_can_leave_a_large_mean_inconclusive():
    c = compare([10.0, 10.0, 10.0, 10.0], [0.0, 0.0, 0.0, 12.0])  # differences 10, 10, 10, -2
    assert c.effect == pytest.approx(7.0) and c.low < 0 and c.verdict == "inconclusive"


def test_lower_is_better_flips_the_winner():
    assert compare([1.0, 1.1, 0.9], [5.0, 5.2, 4.9], higher_is_better=False).verdict == "A better"
    assert compare([1.0, 1.1, 0.9], [5.0, 5.2, 4.9]).verdict == "B better"


def test_compare_needs_paired_seeds():
    with pytest.raises(ValueError, match="one value per seed"):
        compare([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match=">= 2 seeds"):
        compare([1.0], [2.0])


def test_load_results_reads_the_repository_files_and_names_the_writer(tmp_path, monkeypatch):
    doc = load_results("topk_cache")
    assert {"command", "machine", "torch", "seeds", "runs"} <= set(doc)
    with pytest.raises(FileNotFoundError, match="benchmarks/"):
        load_results("no_such_experiment")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "mine.json").write_text(json.dumps({"runs": []}))
    monkeypatch.chdir(tmp_path)
    assert load_results("mine") == {"runs": []}


def test_metric_by_method_orders_values_by_seed():
    runs = [{"seed": 2, "method": "a", "bleu": 3}, {"seed": 0, "method": "a", "bleu": 1},
            {"seed": None, "method": "teacher", "bleu": 9}, {"seed": 1, "method": "a", "bleu": 2}]
    assert metric_by_method(runs, "bleu") == {"a": [1.0, 2.0, 3.0], "teacher": [9.0]}


def test_mean_sd_and_interval_format_as_the_book_prints_them():
    from distilkit.notebook import compare, interval, mean_sd

    assert mean_sd([1.0, 2.0, 3.0]) == "2.0 ± 1.0" and mean_sd([5], digits=2) == "5.00 ± 0.00"
    c = compare([3.0, 5.0, 4.0, 6.0], [1.0, 2.0, 2.0, 2.0])  # differences 2, 3, 2, 4
    assert interval(c) == f"+2.8 [{c.low:+.1f}, {c.high:+.1f}]" and c.low > 0
    assert interval(compare([1.0, 2.0, 1.5], [2.0, 2.5, 2.6]), digits=2).startswith("-0.87 [")


def test_mean_std_is_the_sample_spread():
    from distilkit.notebook import mean_std

    assert mean_std([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 3}
    assert mean_std([5]) == {"mean": 5.0, "std": 0.0, "n": 1}
    with pytest.raises(ValueError, match="values"):
        mean_std([])


@pytest.mark.parametrize("name", ["controls", "gkd_d2t", "capacity_gap", "skew_kl", "temperature_alpha_lr", "student_size_selected", "quality", "lm_divergences", "student_size",
                                  "temperature_alpha", "cross_tokenizer", "hidden_states", "topk_cache"])
def test_results_files_pair_every_method_by_seed(name):
    """The paired rule needs, for every method measured over seeds, one run per seed of the file's
    seeds (a seed fixes the initialisation and the data order of every method alike)."""
    doc = load_results(name)
    seeds: dict = {}
    for r in doc["runs"]:
        if r.get("seed") is not None:
            seeds.setdefault((r["method"], r.get("top_k")), []).append(r["seed"])
    assert len(seeds) >= 2
    assert {k: sorted(v) for k, v in seeds.items()} == {k: sorted(doc["seeds"]) for k in seeds}


def test_controls_makes_every_choice_on_validation_data():
    """benchmarks/controls.py: the learning rate of each method comes from its tuning runs (a seed
    that is not an evaluation seed, validation BLEU only), each run's checkpoint is its earliest
    best on the validation curve, and the comparisons and the primary metric are in the file."""
    doc = load_results("controls")
    assert doc["primary_metric"] == "bleu" and len(doc["comparisons"]) >= 5
    assert len(doc["seeds"]) >= 5 and doc["tuning"]["seed"] not in doc["seeds"]
    every, most = doc["setup"]["every"], doc["setup"]["max_steps"]
    for r in doc["runs"]:
        if r["method"] == "teacher":
            continue
        assert [s for s, _ in r["valid_curve"]] == list(range(every, most + 1, every))
        best = max(v for _, v in r["valid_curve"])
        assert r["selected_step"] == min(s for s, v in r["valid_curve"] if v == best)
        assert r["valid_bleu"] == best and r["lr"] == doc["tuning"]["chosen"][r["method"]]
    for method, lr in doc["tuning"]["chosen"].items():
        rows = [t for t in doc["tuning"]["runs"] if t["method"] == method]
        assert sorted(t["lr"] for t in rows) == sorted(doc["tuning"]["lrs"])
        assert lr == max(rows, key=lambda t: (t["valid_bleu"], -t["lr"]))["lr"]
        assert all("bleu" not in t for t in rows)  # the tuning runs never decoded the test split


def test_capacity_gap_chooses_on_validation_windows_and_its_pairs_recompute():
    """benchmarks/capacity_gap.py: the teachers differ clearly in quality, every student's kept
    checkpoint is one of its validation checks, the validation and test windows are disjoint
    parts of the held-out text, and the stored paired differences recompute from the runs."""
    doc = load_results("capacity_gap")
    setup = doc["setup"]
    assert doc["primary_metric"] == "perplexity" and len(doc["seeds"]) >= 3
    assert setup["valid_windows"] == 250 and setup["test_windows"] > setup["valid_windows"]
    ppl = [doc["teachers"][n]["test_perplexity"] for n in ("small teacher", "medium teacher", "large teacher")]
    assert ppl[0] > 1.1 * ppl[1] > 1.1 * ppl[2]  # three teachers, not two
    for r in doc["runs"]:
        assert r["best_step"] % setup["every"] == 0 and 0 < r["best_step"] <= setup["steps"]
    by = {(r["method"], r["seed"]): r["perplexity"] for r in doc["runs"]}
    planned = {(c["a"], c["b"]) for c in doc["comparisons"]}
    assert {(p["a"], p["b"]) for p in doc["paired"]} == planned
    for p in doc["paired"]:
        c = compare([by[p["a"], s] for s in doc["seeds"]], [by[p["b"], s] for s in doc["seeds"]],
                       higher_is_better=False)
        assert (round(c.effect, 4), round(c.low, 4), round(c.high, 4), c.verdict) == (
            p["diff"], p["low"], p["high"], p["verdict"])


def test_skew_kl_steps_to_target_recompute_from_the_stored_curves():
    """benchmarks/skew_kl.py: the target of each seed is the hard-label student's best validation
    perplexity, and each run's steps-to-target is the first validation check at or below it."""
    doc = load_results("skew_kl")
    assert doc["primary_metric"] == "steps_to_target" and len(doc["seeds"]) >= 3
    hard = {r["seed"]: r["valid_perplexity"] for r in doc["runs"] if r["method"] == "hard labels"}
    for r in doc["runs"]:
        assert r["target"] == hard[r["seed"]]
        assert r["valid_perplexity"] == min(p for _, p in r["valid_curve"])
        first = next((s for s, p in r["valid_curve"] if p <= r["target"]), None)
        assert r["steps_to_target"] == first


def test_temperature_alpha_lr_chooses_each_rate_on_validation_data():
    """benchmarks/temperature_alpha_lr.py: each cell's learning rate is the one whose tuning run
    (a seed that is not an evaluation seed) had the best validation perplexity; the tuning runs
    never measured the test windows."""
    doc = load_results("temperature_alpha_lr")
    tuning = doc["tuning"]["runs"]
    assert doc["primary_metric"] == "perplexity" and doc["tuning"]["seed"] not in doc["seeds"]
    assert len({r["method"] for r in doc["runs"]}) == 17
    for r in doc["runs"]:
        rows = [t for t in tuning if t["method"] == r["method"]]
        assert sorted(t["lr"] for t in rows) == sorted(doc["setup"]["lrs"])
        assert r["lr"] == min(rows, key=lambda t: (t["valid_perplexity"], t["lr"]))["lr"]
        assert all("perplexity" not in t for t in rows)


def test_student_size_selected_makes_every_choice_on_validation_data():
    """results/student_size_selected.json (benchmarks/student_size.py --from-controls): every run's
    checkpoint is its earliest best on the validation curve, its learning rate is the one its size
    and method chose on the tuning seed, and the three sizes follow one rule."""
    doc = load_results("student_size_selected")
    assert doc["primary_metric"] == "bleu" and len(doc["seeds"]) >= 5
    assert set(doc["tuning"]) == {"tiny", "small", "student"}
    for r in doc["runs"][1:]:
        best = max(v for _, v in r["valid_curve"])
        assert r["selected_step"] == min(s for s, v in r["valid_curve"] if v == best)
        kind = "KD" if r["kd"] else "hard labels"
        assert r["lr"] == doc["tuning"][r["size"]]["chosen"][kind]
        assert doc["tuning"][r["size"]]["seed"] not in doc["seeds"]


def _script(name):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def _seeded(doc, key="method"):
    return list(dict.fromkeys(r[key] for r in doc["runs"] if r["seed"] is not None))


def test_topk_cache_fixes_its_margins_chooses_on_validation_and_its_pairs_recompute():
    """benchmarks/topk_cache.py: the equivalence margins and the primary metric are the ones the
    script fixes, every run's checkpoint is its earliest lowest validation NLL, and the stored
    paired comparisons (every cache size against the live teacher) recompute from the runs."""
    script, doc = _script("topk_cache"), load_results("topk_cache")
    assert doc["primary_metric"] == script.PRIMARY_METRIC == "test_nll"
    assert doc["margins"] == script.MARGINS and len(doc["seeds"]) >= 5
    setup = doc["setup"]
    for r in doc["runs"]:
        steps = [s for s, _ in r["valid_curve"]]
        assert steps == list(range(setup["every"], setup["max_steps"] + 1, setup["every"]))
        best = min(v for _, v in r["valid_curve"])
        assert r["selected_step"] == min(s for s, v in r["valid_curve"] if v == best)
    by = {(r["method"], r["seed"]): r for r in doc["runs"]}
    assert [(p["a"], p["metric"]) for p in doc["paired"]] == [
        (c["a"], c["metric"]) for c in script.comparisons([int(k) for k in setup["caches"]])]
    for p in doc["paired"]:
        c = compare([by[p["a"], s][p["metric"]] for s in doc["seeds"]],
                    [by[p["b"], s][p["metric"]] for s in doc["seeds"]],
                    higher_is_better=p["higher_is_better"], margin=p["margin"])
        assert (round(c.effect, 5), round(c.low, 5), round(c.high, 5), c.verdict) == (
            p["diff"], p["low"], p["high"], p["verdict"])


PLANNED = {  # each record's planned comparisons, as its script lists them
    "quality": lambda script, doc: script.comparisons(_seeded(doc)),
    "student_size": lambda script, doc: script.comparisons(_seeded(doc, "size")),
    "temperature_alpha": lambda script, doc: script.COMPARISONS,
}


@pytest.mark.parametrize("name", sorted(PLANNED))
def test_fixed_budget_records_state_their_design_and_their_pairs_recompute(name):
    """The fixed-budget records (quality.py, student_size.py, the one-rate temperature_alpha.py):
    the primary metric, the design and the planned comparisons are the script's, and every stored
    paired difference recomputes from the runs, paired by seed."""
    script, doc = _script(name), load_results(name)
    assert len(doc["seeds"]) >= 3
    assert doc["primary_metric"] == script.PRIMARY_METRIC and doc["design"] == script.DESIGN
    assert doc["comparisons"] == PLANNED[name](script, doc) != []
    assert [(p["a"], p["b"]) for p in doc["paired"]] == [(c["a"], c["b"]) for c in doc["comparisons"]]
    by = {(r["method"], r["seed"]): r for r in doc["runs"]}
    for p in doc["paired"]:
        c = compare([by[p["a"], s][p["metric"]] for s in doc["seeds"]],
                    [by[p["b"], s][p["metric"]] for s in doc["seeds"]], higher_is_better=p["higher_is_better"])
        assert (round(c.effect, 5), round(c.low, 5), round(c.high, 5), c.verdict) == (
            p["diff"], p["low"], p["high"], p["verdict"])
