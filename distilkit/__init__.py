"""distilkit: knowledge distillation for text generators.

The public API, re-exported from the modules:

* losses      -- ``distillation_loss``, ``per_token_divergence``, ``temperature_softmax``, ...
* models      -- ``Seq2SeqLSTM``, ``TransformerLM``, presets, ``count_parameters``
* data        -- tokenizers, the data-to-text task, the text corpus, batching
* train       -- ``train``, ``distill``, ``TrainConfig``, ``KDConfig``, targets
* generate    -- greedy, beam search, sampling
* metrics     -- perplexity, BLEU, slot error rate, agreement, decoding speed
* checkpoint  -- safetensors checkpoints, atomic writes
* adapters    -- ``adapt``: one protocol for distilkit and Hugging Face models (``hf`` extra);
  ``save_pretrained`` exports a model in its family's format
* vocab       -- ``check_vocab``: one tokenizer and output width for teacher and student
* cache       -- ``cache_teacher_logits``, ``load_teacher_cache``: a top-k teacher cache on disk
* distributed -- torchrun / DistributedDataParallel inside ``train`` (no public names)
* userdata    -- the user's text and JSONL files, line-numbered errors

The sub-modules are imported on first use (PEP 562): ``import distilkit`` is cheap and does
not import torch, so ``distilkit --help`` answers at once. ``dk.X`` and ``from distilkit import X``
work as usual.

To export a new name, add one line ``"name": "module",`` to ``_EXPORTS`` and the matching import
under ``if TYPE_CHECKING:`` (for static type checkers; a test checks that the two agree).
"""

from __future__ import annotations

import importlib
import sys
import types
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
    "topk_distillation_loss": "cache",
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
    "beam_search": "generate",
    "generate": "generate",
    "greedy": "generate",
    "sample": "generate",
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
    # metrics
    "agreement": "metrics",
    "bleu_and_ser": "metrics",
    "corpus_bleu": "metrics",
    "decoding_speed": "metrics",
    "perplexity": "metrics",
    "slot_error_rate": "metrics",
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
    "CachedTeacherLogits": "train",
    "HardLabels": "train",
    "History": "train",
    "KDConfig": "train",
    "OnPolicyTargets": "train",
    "TeacherLogits": "train",
    "Targets": "train",
    "TrainConfig": "train",
    "distill": "train",
    "evaluate_loss": "train",
    "precompute_teacher_logits": "train",
    "resolve_device": "train",
    "sequence_level_data": "train",
    "train": "train",
    # vocab
    "check_vocab": "vocab",
    # experiments
    "load_teacher": "experiments",
}

# sub-modules used as ``dk.experiments``, ``dk.notebook``, ...
_SUBMODULES = ("adapters", "cache", "checkpoint", "cli", "data", "distributed", "experiments", "generate", "hf",
               "losses", "metrics", "models", "notebook", "protocol", "train", "userdata", "vocab")

__all__ = [*_EXPORTS, "experiments", "notebook"]

if TYPE_CHECKING:  # what static type checkers and IDEs see; keep in step with _EXPORTS
    from . import experiments, notebook
    from .adapters import ModelAdapter, adapt, save_pretrained
    from .cache import (
        CacheMismatchError,
        TeacherCache,
        cache_teacher_logits,
        load_teacher_cache,
        topk_distillation_loss,
    )
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
    from .generate import beam_search, generate, greedy, sample
    from .losses import (
        DIVERGENCES,
        chunked_distillation_loss,
        distillation_loss,
        distillation_loss_terms,
        divergence_from_log_probs,
        linear_distillation_loss,
        per_token_divergence,
        temperature_log_softmax,
        temperature_softmax,
    )
    from .metrics import (
        agreement,
        bleu_and_ser,
        corpus_bleu,
        decoding_speed,
        perplexity,
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
    from .train import (
        CachedTeacherLogits,
        HardLabels,
        History,
        KDConfig,
        OnPolicyTargets,
        TeacherLogits,
        Targets,
        TrainConfig,
        distill,
        evaluate_loss,
        precompute_teacher_logits,
        resolve_device,
        sequence_level_data,
        train,
    )
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


class _Package(types.ModuleType):
    """``dk.train`` and ``dk.generate`` are functions, although ``distilkit.train`` and
    ``distilkit.generate`` are also modules: importing such a module (``from distilkit.train
    import TrainConfig``) must not replace the function of the same name on the package."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name:
            return  # the module stays reachable through sys.modules; the name means the function
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
