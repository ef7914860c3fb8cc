"""distilkit.widgets: the temperature explorer builds, and moving its slider re-draws the
bars with the probabilities of the new temperature (no kernel needed: the figure is drawn
with matplotlib's Agg backend and only displayed when a kernel is running)."""

import math

import pytest
import torch

import distilkit.widgets as dw  # imports neither ipywidgets nor matplotlib

pytest.importorskip("ipywidgets")
pytest.importorskip("matplotlib").use("Agg")

TOKENS = [f"w{i}" for i in range(12)]
LOGITS = torch.tensor([4.0, 3.9, 3.5, 2.0, 1.0, 0.5, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0])


def bar_heights(drawn):
    (ax,) = drawn.figure.axes
    return [patch.get_height() for patch in ax.patches]


def test_top_k_and_rest_sums_to_one_and_matches_the_softmax():
    probs = dw.top_k_and_rest(LOGITS, 2.0, [0, 1, 2])
    expected = torch.softmax(LOGITS / 2.0, -1)
    assert probs[:3] == pytest.approx(expected[:3].tolist())
    assert sum(probs) == pytest.approx(1.0)
    assert probs[3] == pytest.approx(expected[3:].sum().item())


def test_the_explorer_builds_with_a_slider_and_draws_the_start_temperature():
    import ipywidgets

    explorer = dw.temperature_explorer(LOGITS, TOKENS, k=4, highlight="w1")
    sliders = [w for w in explorer.children if isinstance(w, ipywidgets.FloatSlider)]
    assert len(sliders) == 1 and sliders[0].value == 1.0
    drawn = explorer.result
    assert isinstance(drawn, dw.Drawn) and drawn.temperature == 1.0
    assert drawn.tokens == ["w0", "w1", "w2", "w3", "rest (8)"]
    assert bar_heights(drawn) == pytest.approx(drawn.probabilities)
    assert drawn.probabilities == pytest.approx(dw.top_k_and_rest(LOGITS, 1.0, [0, 1, 2, 3]))


def test_moving_the_slider_redraws_the_probabilities_of_the_new_temperature():
    explorer = dw.temperature_explorer(LOGITS, TOKENS, k=4)
    slider = explorer.children[0]
    before = explorer.result
    slider.value = 5.0
    after = explorer.result
    assert after.temperature == 5.0 and after.figure is not before.figure
    assert bar_heights(after) == pytest.approx(dw.top_k_and_rest(LOGITS, 5.0, [0, 1, 2, 3]))
    # a higher temperature flattens: the top token loses, the rest of the vocabulary gains,
    # the entropy grows towards log |V|, and the ranking of the drawn tokens is unchanged
    assert after.probabilities[0] < before.probabilities[0]
    assert after.probabilities[-1] > before.probabilities[-1]
    assert before.entropy < after.entropy < math.log(len(TOKENS))
    assert after.tokens == before.tokens
    slider.value = 0.25
    sharp = explorer.result
    assert sharp.probabilities[0] > before.probabilities[0]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="tokens names 3 entries"):
        dw.temperature_explorer(LOGITS, TOKENS[:3])
    with pytest.raises(ValueError, match="k must be between"):
        dw.temperature_explorer(LOGITS, TOKENS, k=12)
    with pytest.raises(ValueError, match="one vector"):
        dw.temperature_explorer(LOGITS[None], TOKENS)
