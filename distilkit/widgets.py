"""Interactive figures for a running notebook (they need a live Python kernel, so the static
book only mentions them).

``temperature_explorer`` draws a model's next-token distribution with a slider for the
softmax temperature: the ``k`` most likely tokens and one grey bar for the rest of the
vocabulary, re-drawn whenever the slider moves. Chapter 2 of the book suggests it::

    import distilkit.widgets

    distilkit.widgets.temperature_explorer(teacher_logits[position], tokenizer.itos,
                                           highlight="serves")

Needs ``ipywidgets`` and ``matplotlib`` (both in the ``book`` extra); they are imported when
the function is called, so importing this module costs nothing.
"""

from __future__ import annotations

import math
from typing import Any, List, NamedTuple, Optional, Sequence

import torch

from .losses import temperature_softmax

__all__ = ["Drawn", "temperature_explorer", "top_k_and_rest"]


class Drawn(NamedTuple):
    """What the explorer drew last (its ``.result``)."""

    temperature: float
    tokens: List[str]  #: the bars' labels: the ``k`` most likely tokens, then "rest (n)"
    probabilities: List[float]  #: the bars' heights, summing to 1
    entropy: float  #: of the whole distribution, in nats
    figure: Any  #: the matplotlib figure (closed: it is shown once, not kept open)


def top_k_and_rest(logits, temperature: float, ids: Sequence[int]) -> list:
    """Probabilities at ``temperature`` of the tokens ``ids``, followed by the probability of
    all the other tokens together (so the list sums to 1). ``logits``: (vocab,)."""
    p = temperature_softmax(_as_vector(logits), temperature)
    kept = p[list(ids)]
    return kept.tolist() + [max(0.0, 1.0 - kept.sum().item())]


def _as_vector(logits) -> torch.Tensor:
    z = torch.as_tensor(logits.detach() if isinstance(logits, torch.Tensor) else logits)
    z = z.float().cpu()
    if z.dim() != 1 or len(z) < 2:
        raise ValueError(f"logits must be one vector over the vocabulary, got shape {tuple(z.shape)}")
    return z


def temperature_explorer(logits, tokens: Sequence[str], *, k: int = 10,
                         highlight: Optional[str] = None, t_min: float = 0.25,
                         t_max: float = 10.0, t_step: float = 0.25, value: float = 1.0,
                         figsize=(7.0, 3.4)):
    """A slider for the temperature ``T`` and a bar chart of ``softmax(logits / T)``.

    logits: one position's logits over the vocabulary, shape (vocab,) (a tensor or a list).
    tokens: the name of every vocabulary entry, in the logits' order (``tokenizer.itos``).
    k: how many of the most likely tokens get their own bar; the others share one grey bar,
    "rest". Dividing by ``T`` never changes the ranking, so the same ``k`` tokens are drawn
    at every temperature. highlight: a token drawn in green (e.g. the reference's word).

    Returns the ``ipywidgets.interactive`` box (slider above the figure); show it by ending a
    cell with it. After each redraw its ``.result`` is a :class:`Drawn`: the temperature, the
    plotted probabilities (``k`` tokens, then the rest), the entropy and the figure.
    """
    try:
        import ipywidgets as widgets
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("temperature_explorer needs ipywidgets and matplotlib: "
                          'pip install "distilkit[book]"') from err

    z = _as_vector(logits)
    if len(tokens) != len(z):
        raise ValueError(f"tokens names {len(tokens)} entries, the logits have {len(z)}")
    if not 1 <= k < len(z):
        raise ValueError(f"k must be between 1 and {len(z) - 1}, got {k}")
    if not 0 < t_min <= value <= t_max:
        raise ValueError(f"need 0 < t_min <= value <= t_max, got {t_min}, {value}, {t_max}")
    ids = z.topk(k).indices.tolist()
    names = [str(tokens[i]) for i in ids] + [f"rest ({len(z) - k})"]
    colours = ["C2" if n == highlight else "C0" for n in names[:-1]] + ["#969696"]
    uniform = math.log(len(z))

    def draw(temperature):
        probs = top_k_and_rest(z, temperature, ids)
        p_all = temperature_softmax(z, temperature)
        entropy = -(p_all * p_all.clamp_min(1e-45).log()).sum().item()
        fig, ax = plt.subplots(figsize=figsize)
        ax.bar(range(k + 1), probs, color=colours)
        ax.set_xticks(range(k + 1), names, rotation=35, ha="right")
        ax.set_ylim(0, 1)
        ax.set_ylabel("probability")
        ax.set_title(f"T = {temperature:.2f}: entropy {entropy:.2f} nats "
                     f"(uniform: {uniform:.2f})")
        fig.tight_layout()
        if _in_kernel():
            from IPython.display import display

            display(fig)  # captured by the interactive's output area
        plt.close(fig)
        return Drawn(float(temperature), names, probs, entropy, fig)

    slider = widgets.FloatSlider(value=value, min=t_min, max=t_max, step=t_step,
                                 description="temperature", continuous_update=False,
                                 style={"description_width": "initial"})
    return widgets.interactive(draw, temperature=slider)


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover
        return False
    return getattr(get_ipython(), "kernel", None) is not None
