"""Sharded training (TrainConfig(parallel="fsdp"), FSDP2 on 2 gloo processes on the CPU): ends
where one process with a doubled batch and the DDP run end, resumes exactly, exports a model
that loads in one process; and what it refuses."""

import pytest
import torch
from test_distributed import _max_diff, _run

import distilkit as dk
from distilkit.training.fsdp import shard_units


def test_fsdp_matches_ddp_and_one_process(tmp_path):
    # distillation from a teacher that is sharded too, the memory-bounded loss, grad_accum 2,
    # clipping, 23 uneven examples (the last global batch is short)
    opts = "shard_teacher,memory_bounded"
    fsdp, log = _run(tmp_path, "fsdp", world=2, batch_size=3, distill=True, parallel="fsdp", options=opts)
    ddp, _ = _run(tmp_path, "ddp", world=2, batch_size=3, distill=True, parallel="ddp")
    one, _ = _run(tmp_path, "one", world=1, batch_size=6, distill=True, parallel="fsdp", options=opts)
    vs_one, vs_ddp = _max_diff(fsdp["state"], one["state"]), _max_diff(fsdp["state"], ddp["state"])
    print(f"max |w_fsdp - w_1proc(doubled batch)| = {vs_one:.3g}; max |w_fsdp - w_ddp| = {vs_ddp:.3g}")
    assert fsdp["loss"] == pytest.approx(one["loss"], rel=1e-5)
    assert fsdp["valid"] == pytest.approx(ddp["valid"], rel=1e-5)
    # float32 sums in another order (see test_distributed); DDP uses the plain loss here, the
    # memory-bounded one sums its chunks in another order again
    assert vs_one < 1e-4 and vs_ddp < 1e-4
    assert log.count(" 0/6 ") == 1  # one progress bar, rank 0's


def test_fsdp_seq2seq_without_clipping_matches_one_process(tmp_path):
    fsdp, _ = _run(tmp_path, "fsdp", world=2, batch_size=3, parallel="fsdp", options="seq2seq,clip_none,accum1")
    one, _ = _run(tmp_path, "one", world=1, batch_size=6, options="seq2seq,clip_none,accum1")
    diff = _max_diff(fsdp["state"], one["state"])
    print(f"seq2seq: max |w_fsdp - w_1proc| = {diff:.3g}")
    assert diff < 1e-4


def test_resume_under_fsdp(tmp_path):
    ckpt = tmp_path / "ck"
    full, _ = _run(tmp_path, "full", world=2, batch_size=3, ckpt=ckpt, distill=True, parallel="fsdp")
    (ckpt / "step-00000006.safetensors").unlink()  # as if the run had died after step 3
    resumed, log = _run(tmp_path, "resumed", world=2, batch_size=3, ckpt=ckpt, distill=True, parallel="fsdp")
    diff = _max_diff(full["state"], resumed["state"])
    print(f"max |w_resumed - w_uninterrupted| under FSDP = {diff:.3g}")
    assert diff < 1e-6 and resumed["loss"] == pytest.approx(full["loss"], rel=1e-6)
    assert "3/6" in log
    # the checkpoint FSDP wrote is an ordinary one: full weights, loadable in one process
    model, _, meta = dk.load_model(ckpt / "step-00000006.safetensors")
    assert meta["kind"] == "train_state" and _max_diff(full["state"], model.state_dict()) == 0


def test_parallel_is_validated():
    with pytest.raises(ValueError, match="TrainConfig.parallel must be one of ddp, fsdp"):
        dk.TrainConfig(parallel="zero3")
    with pytest.raises(ValueError, match="shard_teacher=True needs parallel='fsdp'"):
        dk.TrainConfig(shard_teacher=True)


def test_fsdp_in_one_process_is_plain_training():
    torch.manual_seed(0)
    data = [list(range(4, 12)), list(range(5, 15))] * 4
    runs = []
    for parallel in ("ddp", "fsdp"):
        torch.manual_seed(0)
        m = dk.TransformerLM(dk.TransformerConfig(vocab_size=20, d_model=8, n_layers=1, n_heads=2))
        dk.train(m, data, config=dk.TrainConfig(steps=2, batch_size=4, device="cpu", progress=False,
                                                parallel=parallel))
        runs.append(m.state_dict())
    assert _max_diff(*runs) == 0


def test_shard_units_are_found_generically():
    lm = dk.TransformerLM(dk.TransformerConfig(vocab_size=20, d_model=8, n_layers=3, n_heads=2))
    assert shard_units(lm) == list(lm.blocks)
    s2s = dk.Seq2SeqLSTM(dk.Seq2SeqConfig(vocab_size=20, embed_dim=8, hidden_dim=8))
    assert shard_units(s2s) == [s2s.encoder, s2s.decoder]


def test_targets_with_learned_parts_are_refused_under_fsdp():
    """Hidden-state KD's projection is not part of the sharded model: FSDP would neither shard
    nor checkpoint it, so the combination is refused before anything is sharded (the check the
    loop runs under torchrun with parallel='fsdp')."""
    from distilkit.training.loop import _check_fsdp

    torch.manual_seed(0)
    student = dk.TransformerLM(dk.TransformerConfig(vocab_size=20, d_model=8, n_layers=2, n_heads=2))
    teacher = dk.TransformerLM(dk.TransformerConfig(vocab_size=20, d_model=12, n_layers=2, n_heads=2))
    targets = dk.HiddenStateTargets(teacher, dk.KDConfig(hidden_weight=1.0))
    targets.check(dk.adapt(student))  # makes the projection (widths 8 vs 12)
    assert targets.learned is not None
    with pytest.raises(ValueError, match="HiddenStateTargets trains its own projections.*parallel='ddp'"):
        _check_fsdp(student, targets, dk.TrainConfig(parallel="fsdp"))
    _check_fsdp(student, dk.TeacherLogits(teacher), dk.TrainConfig(parallel="fsdp"))  # no learned parts
