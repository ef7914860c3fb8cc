"""Crash and resume: a distillation run killed at any moment continues, on a rerun with the
same arguments, to weights *bitwise equal* to those of a run that was never interrupted; and a
kill in the middle of writing a checkpoint never leaves a half-written checkpoint behind.

The runs are word-level KD (``dk.train`` + ``dk.TeacherLogits``) of a tiny TransformerLM
student with dropout, 40 steps, grad_accum 2, a checkpoint every 5 steps, made by
``tests/_resume_worker.py``. The interrupted runs are subprocesses that get SIGKILLed (no
``finally``, no atexit: what a power cut or the OOM killer does) and are then started again
with the same arguments; the uninterrupted reference is the worker's own ``run`` in this
process. Everything runs on the CPU with one thread.

1. SIGKILL after a random step (seeded ``random.Random``) once a checkpoint exists -> the
   rerun resumes from the newest checkpoint and ends bitwise equal to the reference;
2. SIGKILL in the middle of writing the checkpoint of step 15 (its temporary file cut to half)
   -> step 10 is intact and loads, no step-15 file exists, the rerun uses step 10, ignores the
   leftover ``.tmp`` file, and ends bitwise equal;
3. (in-process) a torn newest checkpoint plus stray ``.tmp`` files -> a warning, a fall back to
   the previous checkpoint, and again bitwise equal weights.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import distilkit as dk
from distilkit.checkpoint import read_checkpoint

torch.set_num_threads(1)

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_resume_worker.py"
STEPS, EVERY = 40, 5
TIMEOUT = 240  # seconds for one worker process, far above its normal ~10 s
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

sys.path.insert(0, str(HERE))
import _resume_worker  # noqa: E402


def _cmd(out: Path, *extra: str) -> list:
    return [sys.executable, str(WORKER), "--out", str(out), "--steps", str(STEPS),
            "--checkpoint-every", str(EVERY), *extra]


def _start(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(_cmd(out, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)


def _finish(proc: subprocess.Popen) -> str:
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"worker did not finish in {TIMEOUT} s:\n{out}\n{err}")
    assert proc.returncode == 0, f"worker failed ({proc.returncode}):\n{out}\n{err}"
    return out


def _checkpoint_steps(folder: Path) -> list:
    return sorted(int(p.name[5:13]) for p in folder.glob("step-*.safetensors"))


def _assert_bitwise_equal(got_path: Path, want_path: Path) -> None:
    got, want = load_file(str(got_path)), load_file(str(want_path))
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
        assert torch.equal(got[name], want[name]), f"tensor {name} differs after resume"


def _info(out: Path) -> dict:
    return json.loads(out.with_suffix(".json").read_text())


class _Background:
    """A worker started once per module, in parallel with the tests: a run SIGKILLed while it
    writes the checkpoint of step 15."""

    def __init__(self, root: Path):
        self.die_dir, self.die_out = root / "ckpt", root / "final.safetensors"
        self.die = _start(self.die_out, "--checkpoint-dir", str(self.die_dir),
                          "--die-during-write-of", "15")
        self._die_result = None

    def died(self):
        if self._die_result is None:
            stdout, err = self.die.communicate(timeout=TIMEOUT)
            self._die_result = (self.die.returncode, stdout, err)
        return self._die_result

    def close(self):
        if self.die.poll() is None:
            self.die.kill()
            self.die.communicate()


@pytest.fixture(scope="module")
def background(tmp_path_factory):
    runs = _Background(tmp_path_factory.mktemp("die_during_write"))
    yield runs
    runs.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, background):
    """The uninterrupted run (no checkpoints at all), written by the worker's ``run`` -- the
    same function the subprocesses run -- in this process, while the background run works."""
    out = tmp_path_factory.mktemp("reference") / "final.safetensors"
    _resume_worker.run(out)
    return out


def test_sigkill_at_a_random_step_then_resume_is_bitwise_equal(tmp_path, reference):
    rng = random.Random(20241128)
    kill_after = rng.randint(EVERY + 1, STEPS - 6)  # a checkpoint exists, the run is not done
    folder, out = tmp_path / "ckpt", tmp_path / "final.safetensors"
    args = ("--checkpoint-dir", str(folder), "--delay", "0.02")
    proc = _start(out, *args)
    seen, deadline = 0, time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if not ready:
                continue
            line = proc.stdout.readline()
            if not line:
                break  # the worker ended by itself
            if line.startswith("step "):
                seen = int(line.split()[1])  # step `seen` has begun: all before it are done
            if seen > kill_after and _checkpoint_steps(folder):
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        if proc.poll() is None and seen <= kill_after:
            proc.kill()
        _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == -signal.SIGKILL, (
        f"the worker was not killed mid-run (exit {proc.returncode}, last step seen {seen}, "
        f"checkpoints {_checkpoint_steps(folder)}):\n{err}")
    assert not out.exists(), "the killed run must not have reached the end"
    left = _checkpoint_steps(folder)
    assert left and all(s % EVERY == 0 and s < STEPS for s in left), left
    newest = left[-1]
    assert newest <= seen + 1

    # the same command again: it resumes from the newest checkpoint and finishes
    _finish(_start(out, *args))
    info = _info(out)
    assert info["started_from"] == newest, (
        f"killed after step {seen - 1} with checkpoints {left}: expected a resume from step "
        f"{newest}, the rerun started from {info['started_from']}")
    hist = info["history"]
    assert hist["step"] == list(range(1, STEPS + 1))  # the restored history has no gap

    ref = reference
    _assert_bitwise_equal(out, ref)
    assert hist["train_loss"] == _info(ref)["history"]["train_loss"]  # float-for-float
    assert hist["valid_loss"] == _info(ref)["history"]["valid_loss"]
    print(f"killed after step {seen - 1} (random target {kill_after}), checkpoints {left}, "
          f"resumed from {newest}: final weights bitwise equal")


def test_kill_during_a_checkpoint_write_keeps_the_previous_checkpoint(background, reference):
    folder, out = background.die_dir, background.die_out
    args = ("--checkpoint-dir", str(folder))
    # 1. a run that is SIGKILLed while it writes the checkpoint of step 15 (started in the
    #    background): the temporary file holds half of it, os.replace is never reached
    returncode, stdout, err = background.died()
    assert returncode == -signal.SIGKILL, f"{stdout}\n{err}"
    assert "dying during the write of step-00000015" in stdout
    leftovers = sorted(folder.glob(".step-00000015.safetensors.tmp*"))
    assert len(leftovers) == 1, sorted(p.name for p in folder.iterdir())
    assert _checkpoint_steps(folder) == [5, 10]  # no step-15 file, half-written or otherwise
    full_size = (folder / "step-00000010.safetensors").stat().st_size
    assert 0 < leftovers[0].stat().st_size < full_size

    # 2. the previous checkpoint is intact and loads (as a training state and as a model);
    #    the crashed write's temporary file is not a checkpoint
    tensors, meta = read_checkpoint(folder / "step-00000010.safetensors")
    assert meta["kind"] == "train_state" and meta["step"] == 10
    model, _, _ = dk.load_model(folder / "step-00000010.safetensors")
    assert isinstance(model, dk.TransformerLM)
    with pytest.raises(dk.CheckpointError):
        read_checkpoint(leftovers[0])

    # 3. the rerun uses step 10, is not disturbed by the leftover, and ends bitwise equal
    _finish(_start(out, *args))
    assert _info(out)["started_from"] == 10
    _assert_bitwise_equal(out, reference)
    assert _checkpoint_steps(folder) == [STEPS - EVERY, STEPS]
    for step in _checkpoint_steps(folder):
        read_checkpoint(folder / f"step-{step:08d}.safetensors")


def test_torn_newest_checkpoint_and_stray_temporary_files_are_skipped(tmp_path, reference):
    """In-process: crash mid-step, then damage the newest checkpoint the way a non-atomic
    writer would (truncated to half) and leave stray temporary files of crashed writes; the
    rerun warns, falls back to the previous checkpoint, and matches an uninterrupted run."""
    ref = _info(reference)
    folder, out = tmp_path / "ckpt", tmp_path / "final.safetensors"
    with pytest.raises(_resume_worker.SimulatedCrash):
        _resume_worker.run(out, folder, crash_after_calls=2 * 17 + 1)  # inside step 18
    assert _checkpoint_steps(folder) == [10, 15]
    newest = folder / "step-00000015.safetensors"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    (folder / ".step-00000020.safetensors.tmp4242").write_bytes(data[: len(data) // 3])
    (folder / ".step-00000015.safetensors.tmp99").write_bytes(os.urandom(1000))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = _resume_worker.run(out, folder)
    messages = [str(w.message) for w in caught]
    assert any("step-00000015.safetensors" in m and "skipping" in m for m in messages), messages
    assert info["started_from"] == 10
    assert ref["history"]["train_loss"] == info["history"]["train_loss"]
    _assert_bitwise_equal(out, reference)
