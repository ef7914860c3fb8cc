"""The top-k teacher cache built by 2 gloo processes equals the one-process cache example by
example, and distilling from it under 2 processes ends where one process with a doubled batch
ends."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from _ddp_worker import examples, models
from test_distributed import _free_port, _max_diff

import distilkit as dk
from distilkit.cache import _my_shards
from distilkit.checkpoint import read_checkpoint

WORKER = Path(__file__).with_name("_cache_worker.py")


def test_shares_are_the_one_process_batches():
    one = [b for _, bs in _my_shards(23, 4, 10, 0, 1) for b in bs]
    parts = [_my_shards(23, 4, 10, r, 2) for r in range(2)]
    assert [b for p in parts for _, bs in p for b in bs] == one
    assert [g for _, bs in _my_shards(23, 4, 10, 0, 1) for g in [_] * len(bs)] == [0, 0, 0, 1, 1, 1, 2]
    assert parts[0][-1][0] == parts[1][0][0] == 1  # shard 1 is cut between the ranks
    assert _my_shards(3, 4, 10, 1, 2) == []  # a rank may have nothing to do


def test_two_process_cache_equals_one_process_cache(tmp_path, monkeypatch):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{Path(__file__).parents[1]}{os.pathsep}{Path(__file__).parent}")
    env.pop("WORLD_SIZE", None)
    out2 = tmp_path / "two.safetensors"
    proc = subprocess.run([sys.executable, str(WORKER), "2", str(_free_port()), str(tmp_path / "c2"), str(out2), "3"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # one process, here
    monkeypatch.setenv("WORLD_SIZE", "1")
    torch.set_num_threads(1)
    student, teacher = models(False)
    data = examples()
    one = dk.cache_teacher_logits(teacher, data, tmp_path / "c1", top_k=5, batch_size=4,
                                  examples_per_shard=10, progress=False)
    two = dk.load_teacher_cache(tmp_path / "c2")
    m1, m2 = one.manifest, two.manifest
    assert {k: v for k, v in m1.items() if k != "shards"} == {k: v for k, v in m2.items() if k != "shards"}
    names = [s["file"] for s in m2["shards"]]
    assert names == ["shard-00000-r000.safetensors", "shard-00001-r000.safetensors",
                     "shard-00001-r001.safetensors", "shard-00002-r001.safetensors"]
    assert sorted(p.name for p in (tmp_path / "c2").glob("shard-*")) == sorted(names)
    assert [s["first_example"] for s in m2["shards"]] == [0, 10, 14, 20]
    for i in range(len(data)):
        for a, b in zip(one.row(i), two.row(i)):
            assert torch.equal(a, b), i
    assert json.loads((tmp_path / "c2" / "manifest.json").read_text())["num_examples"] == 23
    # distil from the 2-process cache under 2 processes == one process, doubled batch
    cfg = dk.TrainConfig(steps=4, batch_size=6, grad_accum=2, lr=1e-2, warmup_steps=2, progress=False,
                         device="cpu")
    dk.distill(student, one, data, config=cfg)
    tensors, _ = read_checkpoint(out2)
    diff = _max_diff({k[6:]: v for k, v in tensors.items()}, student.state_dict())
    print(f"distil from the cache, 2 processes vs 1 (doubled batch): max |dw| = {diff:.3g}")
    assert diff < 1e-4
