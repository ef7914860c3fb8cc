"""Flag names in error messages (standard library only): the checks of the package speak of
Python names (``TrainConfig.steps must be ...``); the command line speaks of its flags."""

from __future__ import annotations

import re
from typing import Dict

__all__ = ["FLAG_OF", "flag_message"]

# Python names that validation errors (TrainConfig, KDConfig, losses, decoding) speak of -> the flag
# that fed them, so that a user reads "--steps must be ...", not "TrainConfig.steps must be ...".
FLAG_OF: Dict[str, str] = {
    "TrainConfig.steps": "--steps",
    "TrainConfig.batch_size": "--batch-size",
    "TrainConfig.grad_accum": "--grad-accum",
    "TrainConfig.lr": "--lr",
    "KDConfig.alpha": "--alpha",
    "KDConfig.beta": "--beta",
    "temperature": "--temperature",
    "beam_size": "--beam-size",
    "top_k": "--top-k",
    "top_p": "--top-p",
    "max_new_tokens": "--max-new-tokens",
    "device": "--device",
    "TrainConfig.max_length": "--max-length",
}
_FLAG_RE = re.compile(
    r"(?<![\w.-])(" + "|".join(re.escape(k) for k in sorted(FLAG_OF, key=len, reverse=True)) + r")"
    r"(?=(?: \([^)]*\))? must\b)")


def flag_message(message: str) -> str:
    """``message`` with each Python name that a check complains about ("TrainConfig.steps must be
    a positive int") replaced by its command-line flag ("--steps must be a positive int")."""
    return _FLAG_RE.sub(lambda m: FLAG_OF[m.group(1)], message)
