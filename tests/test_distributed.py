"""Data-parallel training: 2 gloo processes on the CPU end where one process with a doubled
batch ends, and resume under several processes continues exactly."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distilkit.training.distributed import DistState, rank_slice, setup_distributed

WORKER = Path(__file__).with_name("_ddp_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp_path, name, world, batch_size, steps=6, ckpt="", distill=False, parallel="ddp", options=""):
    """Run tests/_ddp_worker.py; returns ({"state", "loss", "valid"}, stderr). The state is read
    back from the file ``dk.save_model`` wrote, in this one process."""
    from distilkit.checkpoint import read_checkpoint

    out = tmp_path / f"{name}.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]))
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run([sys.executable, str(WORKER), str(world), str(_free_port()), str(out),
                           str(batch_size), str(steps), str(ckpt), "1" if distill else "0", parallel, options],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tensors, _ = read_checkpoint(f"{out}.safetensors")
    return {**torch.load(out), "state": {k[6:]: v for k, v in tensors.items()}}, proc.stderr


def _max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("n, world", [(10, 2), (7, 2), (1, 2), (0, 2), (11, 3), (5, 1)])
def test_rank_slices_partition_the_global_batch(n, world):
    items = list(range(n))
    parts = [rank_slice(items, DistState(r, world)) for r in range(world)]
    assert sum(parts, []) == items
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_single_process_without_world_size(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    state = setup_distributed(torch.device("cpu"))
    assert state == DistState() and not state.enabled and state.is_main


def test_world_size_without_master_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ValueError, match="MASTER_ADDR is not set"):
        setup_distributed(torch.device("cpu"))


@pytest.mark.parametrize("distill", [False, True])
def test_two_processes_match_one_with_doubled_batch(tmp_path, distill):
    # 23 uneven examples, global batch 6: the epoch's last batch is 5 long, so the ranks get
    # unequal token counts and one step sees fewer tokens -- the normalisation must be global
    two, log2 = _run(tmp_path, "two", world=2, batch_size=3, distill=distill)
    one, _ = _run(tmp_path, "one", world=1, batch_size=6, distill=distill)
    diff = _max_diff(two["state"], one["state"])
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
    assert two["valid"] == pytest.approx(one["valid"], rel=1e-5)
    print(f"max |w_2proc - w_1proc| = {diff:.3g}")
    # float32 sums in another order; Adam turns near-zero gradients into lr-sized steps,
    # so rounding shows up at ~1e-5 after 6 steps of lr 1e-2
    assert diff < 1e-4
    if not distill:  # one process with the *undoubled* batch ends elsewhere: a real difference
        half, _ = _run(tmp_path, "half", world=1, batch_size=3)
        other = _max_diff(half["state"], one["state"])
        print(f"batch 3 vs 6 in one process: {other:.3g}")
        assert other > 100 * diff
    assert log2.count("train") >= 1  # rank 0 shows one progress bar ...
    assert log2.count(" 0/6 ") == 1  # ... and only rank 0 (each bar starts at 0/6 once)


def test_learned_projections_are_averaged_over_ranks(tmp_path):
    """Hidden-state KD from a wider teacher trains a projection that lives in the targets, not
    in the DDP-wrapped student: its gradients must be averaged over ranks too, or each rank's
    projection drifts and the student no longer matches one process with the doubled batch."""
    two, _ = _run(tmp_path, "two", world=2, batch_size=3, distill=True, options="hidden")
    one, _ = _run(tmp_path, "one", world=1, batch_size=6, distill=True, options="hidden")
    plain, _ = _run(tmp_path, "plain", world=1, batch_size=6, distill=True)
    diff = _max_diff(two["state"], one["state"])
    print(f"hidden-state KD, max |w_2proc - w_1proc| = {diff:.3g}")
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
    assert diff < 1e-4
    assert _max_diff(plain["state"], one["state"]) > 100 * diff  # the hidden term changed training


def test_resume_under_two_processes(tmp_path):
    ckpt = tmp_path / "ck"
    full, _ = _run(tmp_path, "full", world=2, batch_size=3, ckpt=ckpt)
    files = sorted(p.name for p in ckpt.iterdir())
    assert files == ["step-00000003.safetensors", "step-00000006.safetensors"]
    (ckpt / "step-00000006.safetensors").unlink()  # as if the run had died after step 3
    resumed, log = _run(tmp_path, "resumed", world=2, batch_size=3, ckpt=ckpt)
    assert _max_diff(full["state"], resumed["state"]) < 1e-6
    assert resumed["loss"] == pytest.approx(full["loss"], rel=1e-6)
    assert "3/6" in log  # the bar started at the checkpoint's step
