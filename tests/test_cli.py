"""Tests for the command line (``python -m distilkit ...``): help texts, clean errors, and a
tiny end-to-end train -> generate -> evaluate run in a temporary folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

torch.set_num_threads(1)

from distilkit.cli import main  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def run_cli(*args, cwd=None, timeout=120):
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
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert {"bleu", "slot_error_rate", "perplexity", "params", "tokens_per_s"} <= set(res)
    assert 0 <= res["bleu"] <= 100
    assert res["slot_error_rate"] >= 0
    assert res["perplexity"] > 1
    assert res["params"] == info["params"]
    assert res["tokens_per_s"] > 0
