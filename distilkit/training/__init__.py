"""Training and distillation: one loop, pluggable targets.

Rooms, and what each may import (inside the package; nothing here imports ``distilkit.cli``):

* :mod:`.config`      -- ``TrainConfig``, ``KDConfig``, ``History``, ``resolve_device`` (losses, vocab)
* :mod:`.targets`     -- the ``Targets`` contract, every kind, and ``kd_loss`` (config, losses, cache,
  adapters, decoding)
* :mod:`.hidden`      -- ``HiddenStateTargets``: logits + intermediate layers (targets, losses)
* :mod:`.cross`       -- ``CrossTokenizerTargets``: a teacher with another tokenizer (targets, losses,
  tokenalign)
* :mod:`.resume`      -- step and best checkpoints (config, checkpoint, adapters)
* :mod:`.distributed` -- torchrun: process group, global batch, rank slicing, token divisor (data)
* :mod:`.loop`        -- ``train``, ``distill``, ``evaluate_loss`` (all of the above)
"""

from __future__ import annotations

from .config import History, KDConfig, TrainConfig, resolve_device
from .cross import CrossTokenizerTargets
from .hidden import HiddenStateTargets
from .loop import default_collate, distill, evaluate_loss, train
from .targets import (
    CachedTeacherLogits,
    CacheTargets,
    HardLabels,
    OnPolicyTargets,
    Targets,
    TeacherLogits,
    TeacherSamples,
    kd_loss,
    precompute_teacher_logits,
    sequence_level_data,
)

__all__ = [
    "TrainConfig",
    "KDConfig",
    "History",
    "Targets",
    "HardLabels",
    "TeacherLogits",
    "CachedTeacherLogits",
    "CacheTargets",
    "OnPolicyTargets",
    "TeacherSamples",
    "HiddenStateTargets",
    "CrossTokenizerTargets",
    "kd_loss",
    "precompute_teacher_logits",
    "resolve_device",
    "train",
    "distill",
    "evaluate_loss",
    "sequence_level_data",
    "default_collate",
]
