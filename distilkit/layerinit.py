"""Initialising a student from a teacher's layers (DistilBERT, Sanh et al. 2019: a student of
the teacher's width, its layers copied from every other layer of the teacher)."""

from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn as nn

from .adapters import ModelAdapter, adapt

__all__ = ["init_from_teacher"]


def _prefix(model: nn.Module, layers: nn.ModuleList) -> str:
    for name, module in model.named_modules():
        if module is layers:
            return name
    raise ValueError("the stack of layers is not a sub-module of the model")  # pragma: no cover


@torch.no_grad()
def init_from_teacher(student: Union[nn.Module, ModelAdapter], teacher: Union[nn.Module, ModelAdapter],
                      layers: Sequence[int]) -> nn.Module:
    """Copy teacher layers ``layers[i]`` into student layer ``i`` (0-based), and every parameter
    outside the stack of layers (embeddings, positions, final norm, output layer) by name;
    returns the student, changed in place.

    Student and teacher: one model class (two distilkit ``TransformerLM`` s, or two Hugging Face
    models of one architecture), the student of the teacher's width and vocabulary, with
    ``len(layers)`` layers (:meth:`ModelAdapter.layers`). Every shape is checked before anything
    is copied: a mismatch raises ``ValueError`` naming the parameter, the layer and both shapes,
    and leaves the student unchanged.
    """
    s, t = adapt(student), adapt(teacher)
    if s.model is t.model:
        raise ValueError("teacher and student must be different models (got the same object)")
    if type(s.model) is not type(t.model):
        raise TypeError(f"init_from_teacher copies weights between models of one class; got a "
                        f"{type(s.model).__name__} student and a {type(t.model).__name__} teacher")
    s_stack, t_stack = s.layers(), t.layers()
    layers = list(layers)
    if len(layers) != len(s_stack):
        raise ValueError(f"layers names one teacher layer per student layer: the student has {len(s_stack)} "
                         f"layers, got {len(layers)} ({layers})")
    for i, j in enumerate(layers):
        if isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < len(t_stack):
            raise ValueError(f"layers[{i}] = {j!r}: the teacher has layers 0 .. {len(t_stack) - 1}")
    s_pre, t_pre = _prefix(s.model, s_stack) + ".", _prefix(t.model, t_stack) + "."
    s_state, t_state = s.model.state_dict(), t.model.state_dict()
    new = {}
    for key, value in s_state.items():
        if key.startswith(s_pre):
            index, rest = key[len(s_pre):].split(".", 1)
            src = f"{t_pre}{layers[int(index)]}.{rest}"
            where = f"student layer {index} <- teacher layer {layers[int(index)]}"
        else:
            src, where = key, "outside the layers"
        if src not in t_state:
            raise ValueError(f"cannot initialise student {key!r} ({where}): the teacher has no {src!r}")
        if t_state[src].shape != value.shape:
            raise ValueError(
                f"cannot copy teacher {src!r} {tuple(t_state[src].shape)} into student {key!r} "
                f"{tuple(value.shape)} ({where}): init_from_teacher needs a student of the teacher's width, "
                "vocabulary and maximum length; for a narrower student use hidden-state KD with a projection")
        new[key] = t_state[src].detach().clone().to(value.dtype)
    s.model.load_state_dict(new)
    return s.model
