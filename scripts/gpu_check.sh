#!/usr/bin/env bash
# One prepared GPU check (run on a CUDA machine from the repository root; ~5 minutes):
#  1. the unit tests that matter on CUDA (device placement, bf16 autocast, loss numerics);
#  2. a short distillation run on CUDA with bf16 autocast, checked for finite losses;
#  3. the loss-memory benchmark at LLM-like size (vocab 32k, 8k tokens, hidden 512).
# Prints figures; writes them to ${OUT:-.}/gpu_check.json.
set -euo pipefail
OUT=${OUT:-.}
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
python -m pytest -q tests/test_losses.py -x -q 2>&1 | tail -3
python - <<'PY'
import json, os, time, torch
import distilkit as dk
data = dk.make_data_to_text(num_teacher_train=0)
teacher, tok, _ = dk.experiments.load_teacher(device="cuda")
student = dk.make_model("d2t-student", len(tok))
cfg = dk.TrainConfig(steps=300, batch_size=256, device="cuda", amp=True, progress=False)
t = time.time()
h = dk.distill(student, teacher, data.encode_pairs(data.train), config=cfg)
res = {"device": torch.cuda.get_device_name(0), "steps": 300, "seconds": round(time.time() - t, 1),
       "final_loss": h.train_loss[-1], "finite": all(map(lambda x: x == x and abs(x) < 1e9, h.train_loss)),
       "peak_cuda_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
print(json.dumps(res))
json.dump(res, open(os.path.join(os.environ.get("OUT", "."), "gpu_check.json"), "w"))
PY
python benchmarks/loss_memory.py --tokens 8192 --vocab 32000 --hidden 512
