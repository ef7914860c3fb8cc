"""distilkit: knowledge distillation for text generators.

The public API, re-exported from the modules:

The rooms of the package, from the top down; each may import only the rooms below it (a test
checks that there are no import cycles, lazy imports included):

* cli/        -- ``distilkit`` on the command line: parser (standard library only), inputs
  (flags -> models, data, configs), commands
* experiments, notebook -- what the book and the demo use (the shipped teachers, comparisons)
* training/   -- ``train``, ``distill``, ``TrainConfig``, ``KDConfig``; the ``Targets`` contract and
  every kind of target (``kd_loss`` maps KD settings to the loss); resume; torchrun
* metrics     -- perplexity, BLEU, slot error rate, agreement, decoding speed
* stats       -- the decision rule for comparisons over seeds: ``compare`` (paired t interval,
  equivalence test), ``holm`` (many comparisons); standard library only
* cache       -- the top-k teacher cache on disk: ``cache_teacher_logits``, ``load_teacher_cache``
* decoding    -- greedy, beam search, sampling
* vocab       -- ``check_vocab``: one tokenizer and output width for teacher and student
* layerinit   -- ``init_from_teacher``: a student's layers copied from a teacher's
* tokenalign  -- two tokenizers, one text: character spans, position alignment, vocabulary map
* adapters, protocol, hf -- the one seam for model kinds: ``adapt`` (distilkit and Hugging Face
  models), ``save_pretrained``
* checkpoint  -- safetensors checkpoints, atomic writes
* models      -- ``Seq2SeqLSTM``, ``TransformerLM``, presets, ``count_parameters``
* losses/     -- all loss maths: divergences, ``distillation_loss``, the chunked loss, the top-k loss
* data, userdata -- tokenizers, the data-to-text task, the text corpus, batching; the user's files

Moved in 0.2 (see CHANGELOG.md): ``distilkit.train`` -> ``distilkit.training``,
``distilkit.generate`` -> ``distilkit.decoding``, ``distilkit.distributed`` ->
``distilkit.training.distributed``; every ``dk.*`` name is unchanged.

The sub-modules are imported on first use (PEP 562): ``import distilkit`` is cheap and does
not import torch, so ``distilkit --help`` answers at once. ``dk.X`` and ``from distilkit import X``
work as usual.

To export a new name, add one line ``"name": "module",`` to ``_EXPORTS`` and the matching import
under ``if TYPE_CHECKING:`` (for static type checkers; a test checks that the two agree).
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, List

try:
    __version__ = version("distilkit")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

# public name -> sub-module that defines it
_EXPORTS = {
    # adapters
    "ModelAdapter": "adapters",
    "adapt": "adapters",
    "save_pretrained": "adapters",
    # cache
    "TeacherCache": "cache",
    "CacheMismatchError": "cache",
    "cache_teacher_logits": "cache",
    "load_teacher_cache": "cache",
    # layerinit
    "init_from_teacher": "layerinit",

    # checkpoint
    "CheckpointError": "checkpoint",
    "load_model": "checkpoint",
    "load_weights": "checkpoint",
    "save_model": "checkpoint",
    # data
    "IGNORE_INDEX": "data",
    "BatchIterator": "data",
    "CharTokenizer": "data",
    "DataToTextData": "data",
    "DataToTextTask": "data",
    "LMBatch": "data",
    "Seq2SeqBatch": "data",
    "WordTokenizer": "data",
    "collate_lm": "data",
    "collate_seq2seq": "data",
    "extract_slots": "data",
    "linearize_mr": "data",
    "lm_examples": "data",
    "load_text_corpus": "data",
    "load_tokenizer": "data",
    "make_data_to_text": "data",
    # generate
    "beam_candidates": "decoding",
    "beam_search": "decoding",
    "generate": "decoding",
    "greedy": "decoding",
    "sample": "decoding",
    # losses
    "DIVERGENCES": "losses",
    "chunked_distillation_loss": "losses",
    "distillation_loss": "losses",
    "distillation_loss_terms": "losses",
    "linear_distillation_loss": "losses",
    "divergence_from_log_probs": "losses",
    "per_token_divergence": "losses",
    "temperature_log_softmax": "losses",
    "temperature_softmax": "losses",
    "topk_distillation_loss": "losses",
    "hidden_state_loss": "losses",
    "uld_distance": "losses",
    # metrics
    "agreement": "metrics",
    "bits_per_character": "metrics",
    "bleu_and_ser": "metrics",
    "corpus_bleu": "metrics",
    "decoding_speed": "metrics",
    "perplexity": "metrics",
    "slot_error_rate": "metrics",
    "repeated_ngram_rate": "metrics",
    "self_bleu": "metrics",
    "sentence_bleu": "metrics",
    "slot_errors": "metrics",
    # models
    "PRESETS": "models",
    "Seq2SeqConfig": "models",
    "Seq2SeqLSTM": "models",
    "TransformerConfig": "models",
    "TransformerLM": "models",
    "count_parameters": "models",
    "make_model": "models",
    # train
    "CachedTeacherLogits": "training",
    "HardLabels": "training",
    "History": "training",
    "KDConfig": "training",
    "OnPolicyTargets": "training",
    "TeacherLogits": "training",
    "TeacherSamples": "training",
    "Targets": "training",
    "TrainConfig": "training",
    "CacheTargets": "training",
    "CrossTokenizerTargets": "training",
    "HiddenStateTargets": "training",
    "distill": "training",
    "evaluate_loss": "training",
    "precompute_teacher_logits": "training",
    "resolve_device": "training",
    "sequence_level_data": "training",
    "train": "training",
    # vocab
    "check_vocab": "vocab",
    # experiments
    "load_teacher": "experiments",
    # userdata
    "chat_examples": "userdata",
    # stats
    "Comparison": "stats",
    "compare": "stats",
    "holm": "stats",
    "t_quantile": "stats",
}

# sub-modules used as ``dk.experiments``, ``dk.notebook``, ...
_SUBMODULES = ("adapters", "cache", "checkpoint", "cli", "data", "decoding", "experiments", "hf", "layerinit",
               "losses", "metrics", "models", "notebook", "protocol", "stats", "tokenalign", "training", "userdata", "vocab")

__all__ = [*_EXPORTS, "experiments", "notebook"]

if TYPE_CHECKING:  # what static type checkers and IDEs see; keep in step with _EXPORTS
    from . import experiments, notebook
    from .adapters import ModelAdapter, adapt, save_pretrained
    from .cache import CacheMismatchError, TeacherCache, cache_teacher_logits, load_teacher_cache
    from .checkpoint import CheckpointError, load_model, load_weights, save_model
    from .data import (
        IGNORE_INDEX,
        BatchIterator,
        CharTokenizer,
        DataToTextData,
        DataToTextTask,
        LMBatch,
        Seq2SeqBatch,
        WordTokenizer,
        collate_lm,
        collate_seq2seq,
        extract_slots,
        linearize_mr,
        lm_examples,
        load_text_corpus,
        load_tokenizer,
        make_data_to_text,
    )
    from .experiments import load_teacher
    from .layerinit import init_from_teacher
    from .decoding import beam_candidates, beam_search, generate, greedy, sample
    from .losses import (
        DIVERGENCES,
        chunked_distillation_loss,
        distillation_loss,
        distillation_loss_terms,
        divergence_from_log_probs,
        hidden_state_loss,
        linear_distillation_loss,
        per_token_divergence,
        temperature_log_softmax,
        temperature_softmax,
        topk_distillation_loss,
        uld_distance,
    )
    from .metrics import (
        agreement,
        bits_per_character,
        bleu_and_ser,
        corpus_bleu,
        decoding_speed,
        perplexity,
        repeated_ngram_rate,
        self_bleu,
        sentence_bleu,
        slot_error_rate,
        slot_errors,
    )
    from .models import (
        PRESETS,
        Seq2SeqConfig,
        Seq2SeqLSTM,
        TransformerConfig,
        TransformerLM,
        count_parameters,
        make_model,
    )
    from .training import (
        CachedTeacherLogits,
        CacheTargets,
        CrossTokenizerTargets,
        HardLabels,
        HiddenStateTargets,
        History,
        KDConfig,
        OnPolicyTargets,
        TeacherLogits,
        TeacherSamples,
        Targets,
        TrainConfig,
        distill,
        evaluate_loss,
        precompute_teacher_logits,
        resolve_device,
        sequence_level_data,
        train,
    )
    from .stats import Comparison, compare, holm, t_quantile
    from .userdata import chat_examples
    from .vocab import check_vocab


def __getattr__(name: str) -> Any:
    """Import the sub-module that defines ``name`` on first use (PEP 562)."""
    module_name = _EXPORTS.get(name)
    if module_name is not None:
        value = getattr(importlib.import_module(f".{module_name}", __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted({*globals(), *_EXPORTS, *_SUBMODULES})
