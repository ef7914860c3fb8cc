"""Every command-line flag means something on every path: a flag that does not apply to the
chosen model or data is refused with an error naming it (before any work), and the flags that
used to be read on one path only now work on both. Called as a user calls the command line."""

from __future__ import annotations

import json

import pytest

import distilkit as dk
from distilkit.cli import main

MR = "name : the eagle | food : thai | area : riverside"


def _jsonl(tmp_path, lines, name="pairs.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps({"input": i, "output": o}) + "\n" for i, o in lines))
    return path


def _pairs(n=30):
    return [(f"name : the eagle | food : {food}", f"the eagle serves {food} food .")
            for food in ["thai", "chinese", "italian"] * (n // 3)]


def _refused(capsys, argv, flag, out=None):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"{flag} does not apply" in err, err
    if out is not None:
        assert not out.exists()
    return err


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    return path


def test_flags_of_the_data_to_text_recipe_are_refused_with_data(tmp_path, capsys):
    data, out = _jsonl(tmp_path, _pairs()), tmp_path / "s.safetensors"
    _refused(capsys, ["distill", "--teacher", "d2t-teacher", "--data", str(data), "--transfer", "100",
                      "--out", str(out), "--no-progress"], "--transfer", out)
    _refused(capsys, ["train", "--preset", "d2t-tiny", "--data", str(data), "--labelled", "student",
                      "--out", str(out), "--no-progress"], "--labelled", out)


def test_flags_of_the_other_model_kind_are_refused(tmp_path, capsys, text):
    out = tmp_path / "m.safetensors"
    _refused(capsys, ["train", "--preset", "lm-student", "--labelled", "student", "--out", str(out),
                      "--no-progress"], "--labelled", out)
    _refused(capsys, ["train", "--preset", "d2t-tiny", "--corpus", str(text), "--out", str(out),
                      "--no-progress"], "--corpus", out)
    _refused(capsys, ["train", "--preset", "d2t-tiny", "--block-size", "16", "--out", str(out),
                      "--no-progress"], "--block-size", out)
    _refused(capsys, ["distill", "--teacher", "lm-teacher", "--sequence-level", "--out", str(out),
                      "--no-progress"], "--sequence-level", out)
    _refused(capsys, ["distill", "--teacher", "lm-teacher", "--transfer", "10", "--out", str(out),
                      "--no-progress"], "--transfer", out)


def test_a_preset_beside_a_model_is_refused(tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    path = dk.experiments.checkpoint_path("d2t-teacher")
    _refused(capsys, ["train", "--model", str(path), "--preset", "d2t-tiny", "--out", str(out),
                      "--no-progress"], "--preset", out)
    _refused(capsys, ["distill", "--teacher", "d2t-teacher", "--student", str(path), "--preset", "d2t-tiny",
                      "--out", str(out), "--no-progress"], "--preset", out)


def test_kd_flags_are_refused_with_sequence_level(tmp_path, capsys):
    out = tmp_path / "s.safetensors"
    err = _refused(capsys, ["distill", "--teacher", "d2t-teacher", "--sequence-level", "--alpha", "0.3",
                            "--out", str(out), "--no-progress"], "--alpha", out)
    assert "hard labels" in err


def test_abbreviated_flags_are_recognised(tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    _refused(capsys, ["train", "--preset", "d2t-tiny", "--block", "16", "--out", str(out),
                      "--no-progress"], "--block-size", out)


def test_decoding_options_of_another_method_are_refused(capsys):
    for extra, flag in ((["--top-k", "5"], "--top-k"), (["--temperature", "0.7"], "--temperature"),
                        (["--beam-size", "3"], "--beam-size"), (["--top-p", "0.9"], "--top-p"),
                        (["--prompt", "x"], "--prompt")):
        _refused(capsys, ["generate", "--model", "d2t-teacher", "--mr", MR] + extra, flag)
    _refused(capsys, ["generate", "--model", "d2t-teacher", "--mr", MR, "--method", "beam", "--top-k", "5"],
             "--top-k")
    # the method's own options are accepted
    assert main(["generate", "--model", "d2t-teacher", "--mr", MR, "--method", "beam", "--beam-size", "2",
                 "--max-new-tokens", "5"]) == 0
    assert main(["generate", "--model", "d2t-teacher", "--mr", MR, "--method", "sample", "--top-k", "5",
                 "--temperature", "0.7", "--seed", "3", "--max-new-tokens", "5"]) == 0


def test_evaluate_refuses_what_its_model_kind_ignores(capsys, text):
    _refused(capsys, ["evaluate", "--model", "lm-teacher", "--split", "valid", "--no-progress"], "--split")
    _refused(capsys, ["evaluate", "--model", "d2t-teacher", "--corpus", str(text), "--no-progress"], "--corpus")


# ---------------------------------------------------------------------------- made to work on both paths
def test_sequence_level_on_your_own_pairs(tmp_path, capsys):
    """--sequence-level with --data: the teacher's beam outputs for your inputs are the targets."""
    data, out = _jsonl(tmp_path, _pairs()), tmp_path / "s.safetensors"
    assert main(["distill", "--teacher", "d2t-teacher", "--data", str(data), "--sequence-level",
                 "--preset", "d2t-tiny", "--steps", "1", "--batch-size", "4", "--no-progress", "--device", "cpu",
                 "--out", str(out)]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["train_examples"] == 29  # 30 lines, one held out, each relabelled by the teacher
    assert info["teacher_params"] > info["params"]
    meta = dk.checkpoint.read_checkpoint_meta(out)
    assert meta["extra"]["teacher"] == "d2t-teacher"


def test_block_size_on_the_built_in_corpus(tmp_path, capsys):
    counts = {}
    for block in (32, 64):
        out = tmp_path / f"lm{block}.safetensors"
        assert main(["train", "--preset", "lm-student", "--block-size", str(block), "--steps", "1",
                     "--batch-size", "2", "--no-progress", "--device", "cpu", "--out", str(out)]) == 0
        counts[block] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["train_examples"]
    assert counts[32] == pytest.approx(2 * counts[64], rel=0.01), counts  # windows of --block-size tokens


def test_the_student_preset_follows_the_teachers_kind(tmp_path, capsys):
    out = tmp_path / "lm.safetensors"
    assert main(["distill", "--teacher", "lm-teacher", "--block-size", "32", "--steps", "1", "--batch-size", "2",
                 "--no-progress", "--device", "cpu", "--out", str(out)]) == 0
    model, _, _ = dk.load_model(out)
    assert model.kind == "lm"


# ---------------------------------------------------------------------------- inputs never silently changed
def test_words_the_teacher_does_not_know_are_refused_with_the_line(tmp_path, capsys):
    pairs = _pairs(6) + [("name : joes diner | food : mexican | area : downtown", "joes diner is mexican .")]
    data, out = _jsonl(tmp_path, pairs), tmp_path / "s.safetensors"
    rc = main(["distill", "--teacher", "d2t-teacher", "--data", str(data), "--steps", "1", "--no-progress",
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and f"{data}, line 7" in err and "'joes'" in err and "'diner'" in err, err
    assert not out.exists()


def test_too_little_data_for_validation_gives_valid_json(tmp_path, capsys):
    data, out = _jsonl(tmp_path, _pairs(6)[:5]), tmp_path / "t.safetensors"
    assert main(["train", "--preset", "d2t-tiny", "--data", str(data), "--steps", "1", "--batch-size", "2",
                 "--no-progress", "--device", "cpu", "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]

    def no_constants(name):
        raise AssertionError(f"not valid JSON: {name}")

    info = json.loads(line, parse_constant=no_constants)
    assert info["best_valid_loss"] is None and "nothing was held out" in info["best_valid_loss_note"]
