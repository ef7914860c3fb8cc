"""Tests for the command line (``python -m distilkit ...``) and the package's lazy imports: help
texts without torch, ``--version``, errors that name flags, shipped checkpoints by name, early
checks of output paths, out-of-vocabulary input, and a tiny end-to-end train -> generate ->
evaluate run in a temporary folder."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

import distilkit as dk  # noqa: E402
import distilkit.cli as cli  # noqa: E402
from distilkit.cli import main  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def run_cli(*args, cwd=None, timeout=600):  # generous: a loaded shared machine is slow
    return subprocess.run([sys.executable, "-m", "distilkit", *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


# ============================================================================ help
def test_top_level_help():
    r = run_cli("--help")
    assert r.returncode == 0, r.stderr
    for word in ("demo", "train", "distill", "generate", "evaluate", "examples:"):
        assert word in r.stdout


KEY_OPTIONS = {
    "demo": ["--json", "--steps", "--transfer", "--teacher", "--temperature", "--alpha", "--divergence"],
    "train": ["--preset", "--out", "--labelled", "--steps", "--batch-size", "--grad-accum", "--lr", "--device",
              "--checkpoint-dir", "--no-progress"],
    "distill": ["--teacher", "--preset", "--out", "--transfer", "--sequence-level", "--temperature", "--alpha",
                "--divergence", "--beta", "--checkpoint-dir"],
    "generate": ["--model", "--mr", "--prompt", "--method", "--beam-size", "--top-k", "--top-p",
                 "--max-new-tokens"],
    "evaluate": ["--model", "--split", "--corpus"],
}


@pytest.mark.parametrize("command", sorted(KEY_OPTIONS))
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for opt in KEY_OPTIONS[command]:
        assert opt in out, f"{command} --help does not mention {opt}"


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["generate"])  # --model is required
    assert info.value.code == 2
    assert "--model" in capsys.readouterr().err


# ============================================================================ clean errors
def test_generate_with_a_missing_model_file(tmp_path):
    missing = tmp_path / "no-such-model.safetensors"
    r = run_cli("generate", "--model", str(missing), "--mr", "name : the eagle")
    assert r.returncode == 2
    assert str(missing) in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("distilkit generate: error:")


def test_bad_preset_and_device_are_clean_errors(capsys, tmp_path):
    assert main(["train", "--preset", "nope", "--out", str(tmp_path / "x.safetensors"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "d2t-tiny" in err
    assert main(["generate", "--model", str(tmp_path / "x.safetensors"), "--mr", "x"]) == 2
    assert not (tmp_path / "x.safetensors").exists()


# ============================================================================ end to end
def test_train_generate_evaluate_end_to_end(tmp_path, capsys):
    out = "tiny.safetensors"
    r = run_cli("train", "--preset", "d2t-tiny", "--steps", "3", "--out", out, "--no-progress",
                "--labelled", "student", "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["out"] == out and info["params"] > 0 and info["best_valid_loss"] > 0
    assert (tmp_path / out).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [out]  # no temp files left

    r = run_cli("generate", "--model", out, "--mr", "name : the eagle | food : thai", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 1  # one line of text (after 3 steps it is gibberish)

    # seeded sampling is reproducible (in-process: a subprocess costs seconds of start-up)
    sample_args = ["generate", "--model", str(tmp_path / out), "--mr", "name : the eagle | food : thai",
                   "--method", "sample", "--top-k", "5", "--seed", "1", "--max-new-tokens", "10"]
    assert main(sample_args) == 0
    first = capsys.readouterr().out
    assert main(sample_args) == 0
    assert capsys.readouterr().out == first
    assert main(sample_args[:5] + ["--method", "beam", "--beam-size", "2", "--max-new-tokens", "10"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1

    r = run_cli("evaluate", "--model", out, "--split", "valid", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "evaluate (valid)" in r.stderr and "220/220" in r.stderr  # progress: 200 decoded + 20 timed
    res = json.loads(r.stdout)  # stdout is nothing but the JSON
    assert {"bleu", "slot_error_rate_pct", "repeated_4gram_pct", "perplexity", "params", "tokens_per_s"} <= set(res)
    assert 0 <= res["repeated_4gram_pct"] <= 100
    assert "slot_error_rate" not in res  # one unit on the command line: percent, labelled
    assert 0 <= res["bleu"] <= 100
    assert res["slot_error_rate_pct"] >= 0
    assert res["perplexity"] > 1
    assert res["params"] == info["params"]
    assert res["tokens_per_s"] > 0

    assert main(["evaluate", "--model", str(tmp_path / out), "--split", "valid", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert json.loads(captured.out)["params"] == info["params"]


# ============================================================================ no torch for --help
NO_TORCH = """
import sys
import distilkit.cli
distilkit.cli.build_parser()
for argv in ([], ["--help"], ["--version"], *([c, "--help"] for c in distilkit.cli.build_parser().commands)):
    try:
        distilkit.cli.main(argv)
    except SystemExit:
        pass
heavy = sorted(m for m in ("torch", "numpy", "sacrebleu", "safetensors", "tqdm") if m in sys.modules)
assert not heavy, heavy
"""


def test_help_and_version_do_not_import_torch():
    r = subprocess.run([sys.executable, "-c", NO_TORCH], env=ENV, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_version():
    r = run_cli("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"distilkit {importlib.metadata.version('distilkit')}\n"
    assert dk.__version__ == importlib.metadata.version("distilkit")


def test_divergence_choices_match_the_losses():
    from distilkit.losses import DIVERGENCES

    assert tuple(cli.DIVERGENCES) == tuple(DIVERGENCES)


# ============================================================================ lazy package
def test_import_distilkit_is_lazy():
    code = ("import sys, distilkit as dk\n"
            "assert 'torch' not in sys.modules\n"
            "names = dir(dk)\n"
            "assert all(n in names for n in dk.__all__), set(dk.__all__) - set(names)\n"
            "assert 'distillation_loss' in names and 'experiments' in names\n"
            "assert 'torch' not in sys.modules\n"
            "dk.KDConfig\n"
            "assert 'torch' in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_every_public_name_resolves():
    for name in dk.__all__:
        assert getattr(dk, name) is not None
        ns = {}
        exec(f"from distilkit import {name}", ns)
        assert ns[name] is getattr(dk, name)
    assert dk.experiments.load_teacher is dk.load_teacher
    with pytest.raises(AttributeError, match="no_such_name"):
        dk.no_such_name  # noqa: B018


def test_train_and_generate_stay_functions_when_their_modules_are_imported():
    code = ("import distilkit as dk\n"
            "import distilkit.training, distilkit.decoding\n"
            "from distilkit.training import TrainConfig\n"
            "import sys\n"
            "assert dk.train is sys.modules['distilkit.training'].train, dk.train\n"
            "assert dk.generate is sys.modules['distilkit.decoding'].generate, dk.generate\n"
            "assert dk.greedy is sys.modules['distilkit.decoding'].greedy\n")
    r = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_type_checking_imports_match_the_lazy_table():
    """Static type checkers read the ``if TYPE_CHECKING:`` imports; the runtime reads _EXPORTS."""
    tree = ast.parse(Path(dk.__file__).read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    static = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom) and node.level == 1
        for alias in node.names:
            static[alias.asname or alias.name] = node.module or alias.name
    assert static == {**dk._EXPORTS, "experiments": "experiments", "notebook": "notebook"}
    assert set(dk.__all__) == set(static)


# ============================================================================ errors name flags
def _bad(command, *extra):
    base = {"distill": ["distill", "--teacher", "d2t-teacher", "--out", "s.safetensors", "--no-progress"],
            "demo": ["demo", "--no-progress"],
            "train": ["train", "--preset", "d2t-tiny", "--out", "t.safetensors", "--no-progress"],
            "generate": ["generate", "--model", "d2t-teacher", "--mr", "name : the eagle | food : thai"]}
    return base[command] + list(extra)


# (arguments, the flag the error must name, the Python name it must not show)
FLAG_CASES = [
    (_bad("distill", "--steps", "0"), "--steps", "TrainConfig.steps"),
    (_bad("demo", "--steps", "0"), "--steps", "TrainConfig.steps"),
    (_bad("train", "--steps", "-3"), "--steps", "TrainConfig.steps"),
    (_bad("distill", "--batch-size", "0"), "--batch-size", "TrainConfig.batch_size"),
    (_bad("train", "--grad-accum", "0"), "--grad-accum", "TrainConfig.grad_accum"),
    (_bad("distill", "--lr", "-1"), "--lr", "TrainConfig.lr"),
    (_bad("distill", "--alpha", "1.5"), "--alpha", "KDConfig.alpha"),
    (_bad("demo", "--alpha", "-0.5"), "--alpha", "KDConfig.alpha"),
    (_bad("distill", "--divergence", "jsd", "--beta", "0"), "--beta", "KDConfig.beta"),
    (_bad("distill", "--temperature", "0"), "--temperature", "temperature must"),
    (_bad("generate", "--method", "sample", "--temperature", "0"), "--temperature", "temperature must"),
    (_bad("generate", "--method", "beam", "--beam-size", "0"), "--beam-size", "beam_size"),
    (_bad("generate", "--method", "sample", "--top-k", "0"), "--top-k", "top_k"),
    (_bad("generate", "--method", "sample", "--top-p", "1.5"), "--top-p", "top_p"),
    (_bad("generate", "--max-new-tokens", "0"), "--max-new-tokens", "max_new_tokens"),
    (_bad("distill", "--device", "gpu0"), "--device", "device must"),
    (_bad("distill", "--transfer", "-1"), "--transfer", "num_transfer"),
    (_bad("distill", "--max-length", "0"), "--max-length", "TrainConfig.max_length"),
    (_bad("train", "--max-length", "-2"), "--max-length", "TrainConfig.max_length"),
]


@pytest.mark.parametrize("argv, flag, python_name", FLAG_CASES, ids=[f"{c[0][0]} {c[1]}" for c in FLAG_CASES])
def test_errors_name_the_flag(argv, flag, python_name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    started = []
    monkeypatch.setattr("distilkit.experiments.run_demo", lambda *a, **k: started.append(1))
    monkeypatch.setattr("distilkit.data.make_data_to_text", lambda *a, **k: started.append(1))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"distilkit {argv[0]}: error: "), err
    assert flag in err, err
    assert not re.search(rf"(?<![\w.-]){re.escape(python_name)}", err), err
    assert not started  # refused before any data was made or training started
    assert list(tmp_path.iterdir()) == []


def test_every_entry_of_the_flag_table_is_exercised():
    covered = {python_name.replace(" must", "") for _, _, python_name in FLAG_CASES}
    assert set(cli.FLAG_OF) <= covered
    assert {flag for _, flag, _ in FLAG_CASES} >= set(cli.FLAG_OF.values())


def test_flag_message_rewrites_only_what_a_check_complains_about():
    assert cli.flag_message("TrainConfig.lr must be a finite number > 0, got -1.0") == \
        "--lr must be a finite number > 0, got -1.0"
    assert cli.flag_message("KDConfig.beta (for jsd) must lie in (0, 1), got 0.0") == \
        "--beta (for jsd) must lie in (0, 1), got 0.0"
    prose = "the teacher's temperature is 2 and its device is cuda; max_new_tokens_total must be set"
    assert cli.flag_message(prose) == prose


# ============================================================================ shipped checkpoints by name
def test_generate_with_the_shipped_teacher_by_name(capsys):
    assert main(["generate", "--model", "d2t-teacher", "--mr", "name : the eagle | food : thai",
                 "--max-new-tokens", "40"]) == 0
    out = capsys.readouterr().out
    assert "the eagle" in out and "thai" in out


def test_distill_from_the_shipped_teacher_by_name(tmp_path):
    out = tmp_path / "student.safetensors"
    assert main(["distill", "--teacher", "d2t-teacher", "--preset", "d2t-tiny", "--transfer", "0", "--steps", "1",
                 "--batch-size", "4", "--device", "cpu", "--no-progress", "--out", str(out)]) == 0
    _, _, meta = dk.load_model(out)
    assert meta["extra"]["teacher"] == "d2t-teacher"


def test_unknown_checkpoint_name_lists_the_shipped_ones(capsys, tmp_path):
    for argv in (["generate", "--model", "d2t-teachr", "--mr", "name : the eagle"],
                 ["evaluate", "--model", "d2t-teachr"],
                 ["distill", "--teacher", "d2t-teachr", "--out", str(tmp_path / "s.safetensors")],
                 ["demo", "--teacher", "d2t-teachr"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        flag = "--teacher" if "--teacher" in argv else "--model"
        assert f"{flag} d2t-teachr" in err and "shipped: d2t-lm-teacher, d2t-teacher" in err, err
    assert dk.experiments.shipped_checkpoints() == ["d2t-lm-teacher", "d2t-teacher", "lm-teacher"]


def test_load_teacher_by_unknown_name_lists_the_shipped_ones():
    with pytest.raises(FileNotFoundError, match="no shipped checkpoint named 'd2t-teachr'; shipped: d2t-lm-teacher, d2t-teacher"):
        dk.experiments.load_teacher("d2t-teachr")
    model, tok, _ = dk.experiments.load_teacher("d2t-teacher")
    assert model.kind == "seq2seq" and len(tok) > 4


def test_a_folder_is_not_a_checkpoint(capsys, tmp_path):
    assert main(["generate", "--model", str(tmp_path), "--mr", "name : the eagle"]) == 2
    assert "is a folder" in capsys.readouterr().err


# ============================================================================ output paths checked first
@pytest.mark.parametrize("where", ["missing folder", "a folder"])
def test_demo_json_path_is_checked_before_the_run(where, tmp_path, capsys, monkeypatch):
    started = []
    monkeypatch.setattr("distilkit.experiments.run_demo", lambda *a, **k: started.append(1))
    path = tmp_path / "no-such-folder" / "out.json" if where == "missing folder" else tmp_path
    t0 = time.perf_counter()
    assert main(["demo", "--json", str(path), "--no-progress"]) == 2
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert err.startswith("distilkit demo: error: --json "), err
    assert str(path) in err
    assert not started, "the demo ran although --json could not be written"
    assert elapsed < 10  # (generous: it is a path check; the run it guards takes minutes)


def test_demo_json_good_path_reaches_the_run(tmp_path, monkeypatch):
    class Reached(Exception):
        pass

    def fake_run_demo(**kwargs):
        raise Reached(kwargs)

    monkeypatch.setattr("distilkit.experiments.run_demo", fake_run_demo)
    with pytest.raises(Reached) as info:
        main(["demo", "--json", str(tmp_path / "out.json"), "--steps", "7", "--teacher", "d2t-teacher"])
    kwargs = info.value.args[0]
    assert kwargs["steps"] == 7
    assert kwargs["teacher_path"] == dk.experiments.checkpoint_path("d2t-teacher")


def test_demo_prints_a_legend_the_budget_and_percent(tmp_path, capsys, monkeypatch):
    def scores(bleu, ser):
        return {"params": 1000, "bleu": bleu, "slot_error_rate": ser, "repeated_4gram_pct": 2.5,
                "perplexity": 1.5, "tokens_per_s": 99.0, "outputs": ["x"]}

    fixed = dk.experiments.DemoResult(
        {"teacher": scores(85.0, 0.0125), "baseline": scores(40.0, 0.75), "student": scores(60.0, 0.4)},
        setup={"steps": 7, "batch_size": 64, "labelled_pairs": 400, "transfer_inputs": 10})
    monkeypatch.setattr("distilkit.experiments.run_demo", lambda **kwargs: fixed)
    path = tmp_path / "out.json"
    assert main(["demo", "--json", str(path), "--steps", "7", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "SER %" in out and " 1.25 " in out and " 75.00 " in out  # the table's unit: percent
    assert "rep %" in out and " 2.5 " in out
    for column in ("BLEU:", "SER %:", "rep %:", "ppl:", "tok/s:"):
        assert any(line.startswith(column) for line in out.splitlines()), f"no legend line for {column}"
    assert "budget: each student 7 steps of 64 examples" in out
    assert "SER -35.00 percentage points" in out
    written = json.loads(path.read_text())["models"]
    assert written["teacher"]["slot_error_rate_pct"] == 1.25 and "slot_error_rate" not in written["teacher"]
    assert written["student"]["slot_error_rate_pct"] == 40.0


def test_train_out_is_checked_before_training(tmp_path, capsys, monkeypatch):
    started = []
    monkeypatch.setattr("distilkit.data.make_data_to_text", lambda *a, **k: started.append(1))
    assert main(["train", "--preset", "d2t-tiny", "--out", str(tmp_path / "nope" / "m.safetensors")]) == 2
    assert "--out" in capsys.readouterr().err
    assert not started


# ============================================================================ out-of-vocabulary input
def test_generate_refuses_unknown_words(capsys):
    assert main(["generate", "--model", "d2t-teacher",
                 "--mr", "name : the eagle | food : pizza | area : zanzibar"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("distilkit generate: error: --mr")
    assert "'pizza'" in err and "'zanzibar'" in err
    assert "'eagle'" not in err  # only the unknown words are listed


def test_generate_refuses_unknown_characters_in_a_prompt(tmp_path, capsys):
    tok = dk.CharTokenizer.from_texts(["hello world"])
    torch.manual_seed(0)
    model = dk.TransformerLM(dk.TransformerConfig(vocab_size=len(tok), d_model=16, n_layers=1, n_heads=2,
                                                  max_len=32))
    path = tmp_path / "lm.safetensors"
    dk.save_model(model, path, tok)
    assert main(["generate", "--model", str(path), "--prompt", "hello ZZ!", "--max-new-tokens", "3"]) == 2
    err = capsys.readouterr().err
    assert "--prompt" in err and "'Z'" in err and "'!'" in err
    assert main(["generate", "--model", str(path), "--prompt", "hello", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("hello")


def test_tokenizer_encode_unknown_option():
    tok = dk.WordTokenizer.from_texts(["the eagle serves thai food"])
    assert tok.encode("the pizza", unknown="unk") == [tok.stoi["the"], tok.unk_id]
    assert tok.encode("the eagle", unknown="error") == tok.encode("the eagle")
    with pytest.raises(ValueError, match="'pizza'"):
        tok.encode("the pizza")  # the default refuses
    with pytest.raises(ValueError, match="'pizza', 'oven'"):
        tok.encode("the pizza oven pizza", unknown="error")
    with pytest.raises(ValueError, match="unknown must be"):
        tok.encode("the", unknown="drop")
