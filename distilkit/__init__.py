"""distilkit: knowledge distillation for text generators.

The public API, re-exported from the modules:

* losses      -- ``distillation_loss``, ``per_token_divergence``, ``temperature_softmax``, ...
* models      -- ``Seq2SeqLSTM``, ``TransformerLM``, presets, ``count_parameters``
* data        -- tokenizers, the data-to-text task, the text corpus, batching
* train       -- ``train``, ``distill``, ``TrainConfig``, ``KDConfig``, targets
* generate    -- greedy, beam search, sampling
* metrics     -- perplexity, BLEU, slot error rate, agreement, decoding speed
* checkpoint  -- safetensors checkpoints, atomic writes
"""

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
from .generate import beam_search, generate, greedy, sample
from .losses import (
    DIVERGENCES,
    chunked_distillation_loss,
    distillation_loss,
    distillation_loss_terms,
    divergence_from_log_probs,
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

__version__ = "0.1.0"

from . import experiments, notebook  # noqa: E402  (sub-modules used as dk.experiments, dk.notebook)
from .experiments import load_teacher  # noqa: E402
