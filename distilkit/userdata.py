"""The user's own data: a text file (language modelling) or JSONL pairs (sequence to sequence).

* a **text file** (any suffix but ``.jsonl``): UTF-8 text, cut into windows of
  ``block_size + 1`` tokens for a causal LM;
* a **JSONL file** (``.jsonl``): one JSON object per line, ``{"input": str, "output": str}``,
  for an encoder-decoder model.

Nothing is dropped silently: a line that is not valid JSON, not an object, lacks a key, has an
unknown key, a non-string or empty value, or is blank raises :class:`DataFormatError` naming the
file, the line number and what was wrong. Text that is not UTF-8 is refused with the line of
the first bad byte.

Tokenizers: a distilkit tokenizer (``encode(text, add_eos=...)``) or a Hugging Face tokenizer
(``tok(text)["input_ids"]``, special tokens as the tokenizer adds them).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

__all__ = [
    "DataFormatError",
    "data_format",
    "read_text_file",
    "read_jsonl_pairs",
    "read_jsonl_records",
    "chat_examples",
    "encode_text",
    "encode_lm_text",
    "encode_text_pairs",
    "load_user_examples",
    "check_format",
    "load_pretrained",
    "split_off_valid",
]

KEYS = ("input", "output")


class DataFormatError(ValueError):
    """A data file the user pointed at is malformed; ``path`` and ``line`` (1-based) say where."""

    def __init__(self, path: Union[str, Path], line: Optional[int], message: str):
        self.path, self.line = Path(path), line
        where = f"{path}, line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


def data_format(path: Union[str, Path]) -> str:
    """``"jsonl"`` for a ``.jsonl`` file (seq2seq pairs), else ``"text"`` (language modelling)."""
    return "jsonl" if Path(path).suffix.lower() == ".jsonl" else "text"


def _read_lines(path: Union[str, Path]) -> List[str]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file not found: {p}")
    raw = p.read_bytes()
    lines = raw.split(b"\n")
    out = []
    for n, line in enumerate(lines, start=1):
        try:
            out.append(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise DataFormatError(p, n, f"is not UTF-8 text (byte {line[exc.start]:#04x} at "
                                  f"column {exc.start + 1})") from None
    if out and out[-1] == "":  # the newline that ends the last line
        out.pop()
    return out


def read_text_file(path: Union[str, Path]) -> str:
    """The whole UTF-8 text of ``path``; an empty or whitespace-only file is refused."""
    text = "\n".join(_read_lines(path))
    if not text.strip():
        raise DataFormatError(path, None, "the text file is empty: there is nothing to train on")
    return text


def read_jsonl_pairs(path: Union[str, Path]) -> List[Tuple[str, str]]:
    """``[(input, output), ...]`` from a JSONL file of ``{"input": str, "output": str}`` objects."""
    pairs = []
    for n, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            raise DataFormatError(path, n, 'is blank; every line must be one {"input": ..., '
                                  '"output": ...} object (remove blank lines)')
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(path, n, f"is not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise DataFormatError(path, n, f'must be a JSON object {{"input": ..., "output": ...}}, '
                                  f"got a JSON {type(obj).__name__}")
        missing = [k for k in KEYS if k not in obj]
        if missing:
            raise DataFormatError(path, n, f"lacks the key {', '.join(repr(k) for k in missing)} "
                                  f"(keys found: {sorted(obj)})")
        extra = sorted(k for k in obj if k not in KEYS)
        if extra:
            raise DataFormatError(path, n, f"has unknown key(s) {extra}; only 'input' and 'output' "
                                  "are read, so nothing else may be in the line")
        for k in KEYS:
            if not isinstance(obj[k], str):
                raise DataFormatError(path, n, f"{k!r} must be a string, got {type(obj[k]).__name__}")
            if not obj[k].strip():
                raise DataFormatError(path, n, f"{k!r} is empty")
        pairs.append((obj["input"], obj["output"]))
    if not pairs:
        raise DataFormatError(path, None, "the JSONL file has no lines: there is nothing to train on")
    return pairs


# ============================================================================ encoding
def _is_distilkit_tokenizer(tok: Any) -> bool:
    from .data import Tokenizer

    return isinstance(tok, Tokenizer)


def encode_text(tokenizer: Any, text: str, add_eos: bool = False) -> List[int]:
    """Token ids of ``text``. distilkit tokenizers append ``<eos>`` when ``add_eos``; Hugging
    Face tokenizers add their own special tokens (T5/BART end with ``</s>``, GPT-2 adds none),
    and ``add_eos`` appends ``eos_token_id`` only where the tokenizer did not already.

    A word (or character) a distilkit tokenizer does not know is an error that lists them: it is
    never silently replaced by ``<unk>``."""
    if _is_distilkit_tokenizer(tokenizer):
        return tokenizer.encode(text, add_eos=add_eos, unknown="error")
    ids = list(tokenizer(text)["input_ids"])
    eos = getattr(tokenizer, "eos_token_id", None)
    if add_eos and eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
    return ids


def encode_lm_text(text: str, tokenizer: Any, block_size: int = 128,
                   stride: Optional[int] = None, unknown: str = "error",
                   path: Union[str, Path] = "text", first_line: int = 1) -> List[List[int]]:
    """Windows of ``block_size + 1`` token ids over ``text`` (see :func:`distilkit.data.lm_examples`).

    A character (or word) a distilkit tokenizer does not know is an error naming it and the line
    of ``text`` where it first occurs (``path, line n``, counted from ``first_line``); ``unknown="map"`` maps them to ``<unk>``
    instead, with a warning that counts them."""
    from .data import lm_examples

    if unknown not in ("error", "map"):
        raise ValueError(f"unknown must be 'error' or 'map', got {unknown!r}")
    if _is_distilkit_tokenizer(tokenizer):
        missing = tokenizer.unknown_pieces(text)
        if missing and unknown == "error":
            raise DataFormatError(path, first_line - 1 + _first_line(text, missing[0], tokenizer.kind),
                                  f"{tokenizer.describe_unknown(missing[:20])}"
                                  f"{' (first 20 shown)' if len(missing) > 20 else ''}, first at this line; "
                                  f"the model can only read what its tokenizer knows ({len(tokenizer)} entries)")
        ids = tokenizer.encode(text, unknown="map" if missing else "unk")
    else:
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return lm_examples(ids, block_size, stride)


def _first_line(text: str, piece: str, kind: str) -> int:
    at = (text.lower() if kind == "word" else text).find(piece)
    return text.count("\n", 0, max(at, 0)) + 1


def encode_text_pairs(pairs: Sequence[Tuple[str, str]], tokenizer: Any,
                      path: Union[str, Path] = "<pairs>") -> List[Tuple[List[int], List[int]]]:
    """``(source_ids, target_ids)`` per pair; the target ends in the end-of-sequence token.
    A side that encodes to no token is an error naming its line."""
    out = []
    for n, (src, tgt) in enumerate(pairs, start=1):
        try:
            s = encode_text(tokenizer, src)
            t = encode_text(tokenizer, tgt, add_eos=True)
        except ValueError as exc:
            raise DataFormatError(path, n, f"{exc}; the model can only read what its tokenizer knows "
                                           f"({len(tokenizer)} entries)") from None
        if not s:
            raise DataFormatError(path, n, "'input' encodes to no token with this tokenizer")
        if not t:
            raise DataFormatError(path, n, "'output' encodes to no token with this tokenizer")
        out.append((s, t))
    return out


def load_user_examples(path: Union[str, Path], tokenizer: Any, kind: str,
                       block_size: int = 128) -> List:
    """Read and encode ``path`` for a model of ``kind`` (``"lm"`` or ``"seq2seq"``).

    A text file feeds a causal LM (windows of ``block_size + 1`` ids). A ``.jsonl`` file feeds a
    seq2seq model (``{"input": ..., "output": ...}`` lines: ``(source_ids, target_ids)`` pairs) or a
    causal LM (chat, prompt/completion or input/output lines: ``(prompt_ids, completion_ids)``
    pairs, see :func:`chat_examples`). A text file for a seq2seq model is refused.
    """
    fmt = check_format(path, kind)
    if fmt == "jsonl" and kind == "lm":
        records = read_jsonl_records(path)
        out = []
        for n, obj in records:  # one at a time: an error names the file's own line
            out.extend(chat_examples([obj], tokenizer, path=path, first_line=n))
        return out
    if fmt == "jsonl":
        return encode_text_pairs(read_jsonl_pairs(path), tokenizer, path)
    return encode_lm_text(read_text_file(path), tokenizer, block_size, path=path)


def check_format(path: Union[str, Path], kind: str) -> str:
    """The file's format (:func:`data_format`) if it suits a model of ``kind``; else an error."""
    fmt = data_format(path)
    if kind not in ("lm", "seq2seq"):
        raise ValueError(f"kind must be 'lm' or 'seq2seq', got {kind!r}")
    if fmt == "text" and kind != "lm":
        raise ValueError(f"data file {path} is plain text, which feeds a language model; this "
                         f"model is a {kind!r} model: give it a .jsonl file of input/output pairs")
    return fmt


# ============================================================================ prompt / completion records
RECORD_FORMS = ('{"messages": [{"role": ..., "content": ...}, ...]}', '{"prompt": ..., "completion": ...}',
                '{"input": ..., "output": ...}')


def read_jsonl_records(path: Union[str, Path]) -> List[Tuple[int, dict]]:
    """``[(line_number, object), ...]``: every line of ``path`` one JSON object (checked here; what
    the object must hold is checked by the reader of its form)."""
    out = []
    for n, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            raise DataFormatError(path, n, "is blank; every line must be one JSON object (remove blank lines)")
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(path, n, f"is not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise DataFormatError(path, n, f"must be a JSON object, got a JSON {type(obj).__name__}")
        out.append((n, obj))
    if not out:
        raise DataFormatError(path, None, "the JSONL file has no lines: there is nothing to train on")
    return out


def _text_field(obj: dict, key: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise ValueError(f"{key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{key!r} is empty")
    return value


def _ids(out: Any) -> List[int]:
    """Token ids from what a tokenizer call returned (a list, or a dict with ``input_ids``)."""
    if hasattr(out, "keys") and "input_ids" in out:
        out = out["input_ids"]
    return [int(i) for i in out]


def _chat_pairs(messages: Any, tokenizer: Any) -> List[Tuple[List[int], List[int]]]:
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list of {\"role\": ..., \"content\": ...} objects")
    for j, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise ValueError(f"messages[{j}] must be an object with string 'role' and 'content'")
    if _is_distilkit_tokenizer(tokenizer) or not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat records need a tokenizer with a chat template (tokenizer.chat_template); "
                         "this tokenizer has none: give {\"prompt\": ..., \"completion\": ...} records instead")
    turns = [j for j, m in enumerate(messages) if m["role"] == "assistant"]
    if not turns:
        raise ValueError("the conversation has no assistant turn: there is nothing to score")
    out = []
    for j in turns:
        prompt = _ids(tokenizer.apply_chat_template(messages[:j], add_generation_prompt=True, tokenize=True))
        full = _ids(tokenizer.apply_chat_template(messages[: j + 1], tokenize=True))
        if full[: len(prompt)] != prompt or len(full) == len(prompt):
            raise ValueError(f"the chat template does not render messages[:{j}] (with the generation prompt) "
                             f"as the start of messages[:{j + 1}], so assistant turn {j} cannot be told "
                             "apart from its prompt")
        out.append((prompt, full[len(prompt):]))
    return out


def _completion_pair(prompt: str, completion: str, tokenizer: Any) -> Tuple[List[int], List[int]]:
    """Prompt ids as the tokenizer encodes a text (its special tokens included), completion ids
    without a leading special token and ending in the end-of-sequence token."""
    if _is_distilkit_tokenizer(tokenizer):
        return (tokenizer.encode(prompt, unknown="error"), tokenizer.encode(completion, add_eos=True, unknown="error"))
    ids = _ids(tokenizer(completion, add_special_tokens=False))
    eos = getattr(tokenizer, "eos_token_id", None)
    return _ids(tokenizer(prompt)), ids + ([eos] if eos is not None else [])


def chat_examples(records: Sequence[dict], tokenizer: Any, *,
                  path: Union[str, Path] = "records", first_line: int = 1) -> List[Tuple[List[int], List[int]]]:
    """``(prompt_ids, completion_ids)`` pairs for a causal language model from ``records``:

    * ``{"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}, ...]}`` -- rendered
      with the tokenizer's chat template; every assistant turn gives one pair, with the whole
      conversation before it (and the template's generation prompt) as its prompt, so only the
      assistant's words are scored;
    * ``{"prompt": ..., "completion": ...}`` (or ``{"input": ..., "output": ...}``) -- the prompt as
      the tokenizer encodes a text, the completion ending in the end-of-sequence token.

    Train on the result with ``dk.train`` / ``dk.distill``: the model reads prompt + completion and
    every loss term scores the completion only. A malformed record is an error naming it
    (``records[i]``, or ``path, line n`` when ``path`` is given).
    """
    out = []
    for i, rec in enumerate(records):
        where = f"{path}[{i}]" if path == "records" else None
        try:
            if not isinstance(rec, dict):
                raise ValueError(f"must be a JSON object, one of {', '.join(RECORD_FORMS)}; got "
                                 f"{type(rec).__name__}")
            keys = set(rec)
            if keys == {"messages"}:
                out.extend(_chat_pairs(rec["messages"], tokenizer))
            elif keys in ({"prompt", "completion"}, {"input", "output"}):
                a, b = ("prompt", "completion") if "prompt" in keys else ("input", "output")
                out.append(_completion_pair(_text_field(rec, a), _text_field(rec, b), tokenizer))
            else:
                raise ValueError(f"has the keys {sorted(keys)}; expected one of {', '.join(RECORD_FORMS)}")
        except ValueError as exc:
            if where is not None:
                raise ValueError(f"{where}: {exc}") from None
            raise DataFormatError(path, first_line + i, str(exc)) from None
    return out


# ============================================================================ models by name
def load_pretrained(name_or_path: str):
    """``(model, tokenizer)`` for a Hugging Face model name or a local folder written by
    ``save_pretrained``: an encoder-decoder config (``is_encoder_decoder``) loads with
    ``AutoModelForSeq2SeqLM``, any other with ``AutoModelForCausalLM``. Needs the ``hf`` extra."""
    try:
        import transformers
    except ImportError:
        raise ImportError(f"loading {name_or_path!r} needs Hugging Face transformers: "
                          'pip install "distilkit[hf]"') from None
    try:
        config = transformers.AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"{name_or_path!r} is neither a local model folder nor a model name "
                                f"that transformers can load: {str(exc).splitlines()[0]}") from None
    auto = (transformers.AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False)
            else transformers.AutoModelForCausalLM)
    model = auto.from_pretrained(name_or_path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(name_or_path)
    return model, tokenizer


def split_off_valid(examples: Sequence, fraction: float = 0.05, min_train: int = 20):
    """``(train, valid)``: the last ``fraction`` of ``examples`` (at least one) held out for
    validation; with fewer than ``min_train`` examples nothing is held out (valid is None) and a
    warning says so (there is then no validation loss, and no best weights to restore)."""
    if len(examples) < min_train:
        warnings.warn(f"only {len(examples)} example(s), fewer than {min_train}: none is held out for "
                      "validation, so no validation loss is computed; give more data to get one",
                      stacklevel=2)
        return list(examples), None
    n = max(1, int(len(examples) * fraction))
    return list(examples[:-n]), list(examples[-n:])
