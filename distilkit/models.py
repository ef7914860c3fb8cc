"""Teacher and student models.

* :class:`Seq2SeqLSTM` -- the encoder-decoder LSTM of the source article, done right: the
  decoder *embeds* its input tokens, starts from the encoder's final state and attends over
  the encoder outputs (Luong et al., 2015, "general" attention).
* :class:`TransformerLM` -- a small decoder-only Transformer (the GPT side), with a KV cache.

Both follow one interface, which the training loop and the decoders use:

* ``model(batch) -> logits`` of shape (batch, tgt_len, vocab), aligned with ``batch.labels``;
* ``model.start(inputs) -> (logits, state)`` -- logits (batch, vocab) for the first new token;
* ``model.step(state, tokens) -> (logits, state)`` -- feed one token per row;
* ``model.reorder_state(state, index)`` -- select / repeat rows (beam search).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, is_dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .data import LMBatch, Seq2SeqBatch

__all__ = [
    "Seq2SeqConfig",
    "Seq2SeqLSTM",
    "TransformerConfig",
    "TransformerLM",
    "PRESETS",
    "make_model",
    "model_from_config",
    "count_parameters",
]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def check_token_ids(ids: torch.Tensor, vocab_size: int, name: str) -> None:
    """Raise ``ValueError`` if ``ids`` (any shape) holds an id outside ``[0, vocab_size)``.

    The values are read only when ``ids`` live in host memory: on an accelerator, reading them
    back would stall the device once per forward pass. Ids that reach a model on an accelerator
    were checked on the host where they were made (:func:`distilkit.decoding.generate` checks its
    ``inputs``; :func:`distilkit.train` checks each batch before moving it to the device)."""
    if ids.device.type != "cpu":
        return
    low, high = torch.aminmax(ids)
    if bool((low < 0) | (high >= vocab_size)):
        bad = int(low) if int(low) < 0 else int(high)
        raise ValueError(f"{name} must lie in [0, {vocab_size}), got {bad}")


def _check_positive(cfg, names):
    for n in names:
        v = getattr(cfg, n)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{type(cfg).__name__}.{n} must be a positive int, got {v!r}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"{type(cfg).__name__}.dropout must be in [0, 1), got {cfg.dropout}")


# ============================================================================ LSTM seq2seq
@dataclass
class Seq2SeqConfig:
    vocab_size: int
    embed_dim: int = 64
    hidden_dim: int = 128
    encoder_layers: int = 1
    decoder_layers: int = 1
    dropout: float = 0.0
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self):
        _check_positive(self, ["vocab_size", "embed_dim", "hidden_dim", "encoder_layers", "decoder_layers"])
        if self.hidden_dim % 2:
            raise ValueError(f"Seq2SeqConfig.hidden_dim must be even (bidirectional encoder), got {self.hidden_dim}")


class Seq2SeqLSTM(nn.Module):
    """Bidirectional LSTM encoder, LSTM decoder with attention over the encoder outputs.

    No maximum length: sources and targets of any length work (time and memory grow linearly
    with the length, attention with source x target length); nothing is truncated."""

    kind = "seq2seq"

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.config = c = config
        self.src_embed = nn.Embedding(c.vocab_size, c.embed_dim, padding_idx=c.pad_id)
        self.tgt_embed = nn.Embedding(c.vocab_size, c.embed_dim, padding_idx=c.pad_id)
        drop = c.dropout if c.encoder_layers > 1 else 0.0
        self.encoder = nn.LSTM(c.embed_dim, c.hidden_dim // 2, c.encoder_layers, batch_first=True,
                               bidirectional=True, dropout=drop)
        self.bridge_h = nn.Linear(c.hidden_dim, c.hidden_dim * c.decoder_layers)
        self.bridge_c = nn.Linear(c.hidden_dim, c.hidden_dim * c.decoder_layers)
        drop = c.dropout if c.decoder_layers > 1 else 0.0
        self.decoder = nn.LSTM(c.embed_dim, c.hidden_dim, c.decoder_layers, batch_first=True, dropout=drop)
        self.attn = nn.Linear(c.hidden_dim, c.hidden_dim, bias=False)
        self.combine = nn.Linear(2 * c.hidden_dim, c.hidden_dim)
        self.drop = nn.Dropout(c.dropout)
        self.out = nn.Linear(c.hidden_dim, c.vocab_size)

    # -- pieces
    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor):
        """src: (batch, src_len) -> memory (batch, src_len, hidden), mask, initial decoder state."""
        c = self.config
        if src.dim() != 2:
            raise ValueError(f"src must be (batch, src_len), got shape {tuple(src.shape)}")
        if src.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"src must be an integer (torch.long) tensor of token ids, got dtype {src.dtype}")
        if src.numel() == 0:
            raise ValueError(f"src must not be empty, got shape {tuple(src.shape)}")
        check_token_ids(src, c.vocab_size, "src token ids")
        emb = self.drop(self.src_embed(src))
        # sort by length on the host: torch's enforce_sorted=False path copies the order to the
        # device and reads it back, two waits for the device per call
        lengths, order = torch.sort(src_lengths.detach().cpu().clamp(min=1), descending=True)
        inverse = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel()))
        order, inverse = order.to(src.device, non_blocking=True), inverse.to(src.device, non_blocking=True)
        packed = pack_padded_sequence(emb.index_select(0, order), lengths, batch_first=True)
        out, (h, _) = self.encoder(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])
        memory, h = memory.index_select(0, inverse), h.index_select(1, inverse)
        final = torch.cat([h[-2], h[-1]], dim=-1)  # last layer, both directions: (batch, hidden)
        b = src.shape[0]
        h0 = torch.tanh(self.bridge_h(final)).view(b, c.decoder_layers, c.hidden_dim).transpose(0, 1)
        c0 = self.bridge_c(final).view(b, c.decoder_layers, c.hidden_dim).transpose(0, 1)
        lengths_here = src_lengths.to(src.device, non_blocking=True)
        mask = torch.arange(src.shape[1], device=src.device)[None, :] < lengths_here[:, None]
        return memory, mask, (h0.contiguous(), c0.contiguous())

    def _attend(self, dec_out, memory, mask, head: bool = True):
        scores = torch.bmm(self.attn(dec_out), memory.transpose(1, 2))  # (b, t, s)
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        context = torch.bmm(torch.softmax(scores, dim=-1), memory)
        hidden = self.drop(torch.tanh(self.combine(torch.cat([dec_out, context], dim=-1))))
        return self.out(hidden) if head else hidden

    def _teacher_forced(self, batch: Seq2SeqBatch, head: bool) -> torch.Tensor:
        if not isinstance(batch, Seq2SeqBatch):
            raise TypeError(f"Seq2SeqLSTM expects a Seq2SeqBatch, got {type(batch).__name__}")
        memory, mask, state = self.encode(batch.src, batch.src_lengths)
        emb = self.drop(self.tgt_embed(batch.decoder_input))  # the decoder embeds its input
        dec_out, _ = self.decoder(emb, state)
        return self._attend(dec_out, memory, mask, head)

    def forward(self, batch: Seq2SeqBatch) -> torch.Tensor:
        """Teacher-forced logits: (batch, tgt_len, vocab), aligned with ``batch.labels``."""
        return self._teacher_forced(batch, head=True)

    def hidden_and_head(self, batch: Seq2SeqBatch):
        """``(hidden, weight, bias)``: hidden (batch, tgt_len, hidden_dim), the output layer's
        weight (vocab, hidden_dim) and bias (vocab,); ``forward(batch) == hidden @ weight.T + bias``."""
        return self._teacher_forced(batch, head=False), self.out.weight, self.out.bias

    # -- incremental decoding
    def start(self, inputs: Sequence[Sequence[int]]):
        """inputs: source token-id lists. Returns logits (batch, vocab) for the first token."""
        device = self.out.weight.device
        if len(inputs) == 0 or any(len(s) == 0 for s in inputs):
            raise ValueError("inputs must be a non-empty list of non-empty token-id lists")
        lengths = torch.tensor([len(s) for s in inputs])
        src = torch.full((len(inputs), int(lengths.max())), self.config.pad_id, dtype=torch.long)
        for i, s in enumerate(inputs):
            src[i, : len(s)] = torch.as_tensor(list(s))
        memory, mask, state = self.encode(src.to(device), lengths)
        state = {"memory": memory, "mask": mask, "h": state[0], "c": state[1]}
        bos = torch.full((len(inputs),), self.config.bos_id, dtype=torch.long, device=device)
        return self.step(state, bos)

    def step(self, state, tokens: torch.Tensor):
        emb = self.drop(self.tgt_embed(tokens[:, None]))
        dec_out, (h, c) = self.decoder(emb, (state["h"], state["c"]))
        logits = self._attend(dec_out, state["memory"], state["mask"])[:, 0]
        return logits, {**state, "h": h, "c": c}

    def reorder_state(self, state, index: torch.Tensor):
        return {"memory": state["memory"][index], "mask": state["mask"][index],
                "h": state["h"][:, index], "c": state["c"][:, index]}


# ============================================================================ Transformer LM
@dataclass
class TransformerConfig:
    vocab_size: int
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    max_len: int = 256
    dropout: float = 0.0
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self):
        _check_positive(self, ["vocab_size", "d_model", "n_layers", "n_heads", "max_len"])
        if self.d_model % self.n_heads:
            raise ValueError(
                f"TransformerConfig.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )


class _Block(nn.Module):
    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.n_heads = c.n_heads
        self.ln1, self.ln2 = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        self.qkv = nn.Linear(c.d_model, 3 * c.d_model)
        self.proj = nn.Linear(c.d_model, c.d_model)
        self.mlp = nn.Sequential(nn.Linear(c.d_model, 4 * c.d_model), nn.GELU(),
                                 nn.Linear(4 * c.d_model, c.d_model))
        self.drop = nn.Dropout(c.dropout)
        self.p = c.dropout

    def forward(self, x, cache: Optional[Tuple[torch.Tensor, torch.Tensor]] = None):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v))
        past = 0 if cache is None else cache[0].shape[2]
        if past:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        mask = None
        if past and t > 1:
            # new token i sits at position past + i and may see keys 0 .. past + i
            mask = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(diagonal=past)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=not past and t > 1,
                                           dropout_p=self.p if self.training else 0.0)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, t, d)))
        x = x + self.drop(self.mlp(self.ln2(x)))
        return x, (k, v)


class TransformerLM(nn.Module):
    """A pre-norm GPT-style decoder with learned positions and tied input/output embeddings.

    It sees at most ``config.max_len`` tokens: a longer input (in training, evaluation or
    decoding, prompt + new tokens) raises ``ValueError``; nothing is truncated silently."""

    kind = "lm"

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = c = config
        self.tok = nn.Embedding(c.vocab_size, c.d_model)
        self.pos = nn.Embedding(c.max_len, c.d_model)
        self.blocks = nn.ModuleList(_Block(c) for _ in range(c.n_layers))
        self.ln = nn.LayerNorm(c.d_model)
        self.drop = nn.Dropout(c.dropout)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def _run(self, ids: torch.Tensor, caches=None, offset: int = 0, head: bool = True,
             layers: Optional[list] = None):
        c = self.config
        if ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"token ids must be an integer (torch.long) tensor, got dtype {ids.dtype}")
        if ids.numel() == 0:
            raise ValueError(f"token ids must not be empty, got shape {tuple(ids.shape)}")
        if ids.shape[1] + offset > c.max_len:
            raise ValueError(
                f"sequence length {ids.shape[1] + offset} exceeds the model's max_len {c.max_len}; "
                "truncate the input or use a model with a larger max_len"
            )
        check_token_ids(ids, c.vocab_size, "token ids")
        pos = torch.arange(offset, offset + ids.shape[1], device=ids.device)
        x = self.drop(self.tok(ids) + self.pos(pos))
        new = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, None if caches is None else caches[i])
            new.append(kv)
            if layers is not None:  # every block's output (the residual stream), for hidden-state KD
                layers.append(x)
        x = self.ln(x)
        return (x @ self.tok.weight.T if head else x), new

    @staticmethod
    def _ids(batch) -> torch.Tensor:
        ids = batch.input_ids if isinstance(batch, LMBatch) else batch
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
            raise TypeError("TransformerLM expects an LMBatch or a (batch, seq) LongTensor of ids")
        return ids

    def forward(self, batch, output_hidden_states: bool = False):
        """batch: :class:`LMBatch` or (batch, seq) ids -> logits (batch, seq, vocab); with
        ``output_hidden_states=True``, ``(logits, hidden)`` where ``hidden[i]`` is the output of
        block ``i`` (batch, seq, d_model), before the final layer norm."""
        if not output_hidden_states:
            return self._run(self._ids(batch))[0]
        layers: list = []
        logits = self._run(self._ids(batch), layers=layers)[0]
        return logits, layers

    def hidden_and_head(self, batch):
        """``(hidden, weight, None)``: the final (normalised) hidden states (batch, seq, d_model)
        and the tied output weight (vocab, d_model); ``forward(batch) == hidden @ weight.T``."""
        return self._run(self._ids(batch), head=False)[0], self.tok.weight, None

    def start(self, inputs: Sequence[Sequence[int]]):
        """inputs: prompts of equal length (token-id lists). Returns next-token logits (batch, vocab)."""
        if len(inputs) == 0 or any(len(p) == 0 for p in inputs):
            raise ValueError("inputs must be a non-empty list of non-empty prompts")
        if len({len(p) for p in inputs}) != 1:
            raise ValueError("prompts in one call must have equal length; generate them separately")
        ids = torch.tensor([list(p) for p in inputs], device=self.tok.weight.device)
        logits, caches = self._run(ids)
        return logits[:, -1], {"caches": caches, "length": ids.shape[1]}

    def step(self, state, tokens: torch.Tensor):
        """tokens: (batch,) -> next-token logits (batch, vocab) and the new state."""
        logits, state = self.extend(state, tokens[:, None])
        return logits[:, -1], state

    def extend(self, state, tokens: torch.Tensor):
        """Feed several tokens per row on top of the KV cache (chunked prefill, or scoring
        drafted tokens): tokens (batch, n) -> logits (batch, n, vocab) and the new state.

        Each new token attends to the cache and to the new tokens up to itself, so the logits
        equal those of one forward pass over the whole sequence."""
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
            raise ValueError("tokens must be a (batch, n) tensor of token ids")
        logits, caches = self._run(tokens, state["caches"], state["length"])
        return logits, {"caches": caches, "length": state["length"] + tokens.shape[1]}

    def reorder_state(self, state, index: torch.Tensor):
        return {"caches": [(k[index], v[index]) for k, v in state["caches"]], "length": state["length"]}


# ============================================================================ presets
PRESETS = {
    # data-to-text: the shipped d2t-teacher checkpoint is this preset (1.23M parameters at the
    # task's vocabulary), about 6.8x the student; see chapter 4
    "d2t-teacher": (Seq2SeqConfig, dict(embed_dim=96, hidden_dim=192, encoder_layers=2,
                                        decoder_layers=2, dropout=0.2)),
    "d2t-student": (Seq2SeqConfig, dict(embed_dim=48, hidden_dim=96, encoder_layers=1,
                                        decoder_layers=1, dropout=0.1)),
    "d2t-tiny": (Seq2SeqConfig, dict(embed_dim=32, hidden_dim=48, encoder_layers=1,
                                     decoder_layers=1, dropout=0.0)),
    # character-level language modelling on English text
    "lm-teacher": (TransformerConfig, dict(d_model=128, n_layers=6, n_heads=4, max_len=256, dropout=0.1)),
    "lm-student": (TransformerConfig, dict(d_model=64, n_layers=1, n_heads=4, max_len=256, dropout=0.0)),
}


def model_from_config(config) -> nn.Module:
    """Build the model class that matches a config object."""
    if isinstance(config, Seq2SeqConfig):
        return Seq2SeqLSTM(config)
    if isinstance(config, TransformerConfig):
        return TransformerLM(config)
    raise TypeError(f"config must be a Seq2SeqConfig or TransformerConfig, got {type(config).__name__}")


def make_model(preset: str, vocab_size: int, **overrides) -> nn.Module:
    """A model from a named preset (see :data:`PRESETS`), e.g. ``make_model("d2t-student", 300)``."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}; got {preset!r}")
    cls, kwargs = PRESETS[preset]
    return model_from_config(cls(vocab_size=vocab_size, **{**kwargs, **overrides}))


def config_to_dict(config) -> dict:
    """A model config as the plain dict that JSON gives back (so that a config read from a
    checkpoint compares equal to the live one). Takes distilkit's dataclass configs and
    Hugging Face ``PretrainedConfig``-style objects (anything with ``to_dict()``)."""
    if is_dataclass(config) and not isinstance(config, type):
        d = asdict(config)
    elif callable(getattr(config, "to_dict", None)):
        d = config.to_dict()
    else:
        raise TypeError(f"config must be a dataclass or have to_dict(), got {type(config).__name__}")
    return json.loads(json.dumps({"class": type(config).__name__, **d}, sort_keys=True, default=str))


def config_from_dict(d: dict):
    classes = {"Seq2SeqConfig": Seq2SeqConfig, "TransformerConfig": TransformerConfig}
    d = dict(d)
    name = d.pop("class", None)
    if name not in classes:
        raise ValueError(f"unknown model config class {name!r}; expected one of {sorted(classes)}")
    try:
        return classes[name](**d)
    except TypeError as exc:
        raise ValueError(f"model config does not match {name}: {exc}") from None
