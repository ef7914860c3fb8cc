"""Tokenizers: a word-level and a character-level tokenizer with special tokens, their JSON
form, and what encoding does with a piece outside the vocabulary (refuse it by default).

:mod:`distilkit.data` re-exports every public name here (``from distilkit.data import
WordTokenizer`` keeps working)."""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Union

__all__ = ["PAD", "BOS", "EOS", "UNK", "SPECIALS", "UNKNOWN_CHOICES", "Tokenizer", "WordTokenizer", "CharTokenizer",
           "tokenizer_from_dict", "load_tokenizer", "atomic_write_text"]

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
UNKNOWN_CHOICES = ("error", "map", "unk")  # what encoding does with a piece outside the vocabulary


# ============================================================================ tokenizers
class Tokenizer:
    """Shared vocabulary logic: ids 0..3 are <pad>, <bos>, <eos>, <unk>."""

    kind = "base"

    def __init__(self, tokens: Sequence[str]):
        tokens = list(tokens)
        if tokens[: len(SPECIALS)] != list(SPECIALS):
            tokens = list(SPECIALS) + [t for t in tokens if t not in SPECIALS]
        if len(set(tokens)) != len(tokens):
            raise ValueError("tokens must not contain duplicates")
        self.itos: List[str] = tokens
        self.stoi: Dict[str, int] = {t: i for i, t in enumerate(tokens)}

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    def __len__(self) -> int:
        return len(self.itos)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def split(self, text: str) -> List[str]:  # pragma: no cover - overridden
        raise NotImplementedError

    def join(self, pieces: List[str]) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def unknown_pieces(self, text: str) -> List[str]:
        """The distinct pieces (words or characters) of ``text`` outside the vocabulary, in the
        order they first occur."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return list(dict.fromkeys(p for p in self.split(text) if p not in self.stoi))

    def describe_unknown(self, missing: Sequence[str]) -> str:
        """``"2 word(s) not in the tokenizer's vocabulary: 'joes', 'diner'"``."""
        unit = "word" if self.kind == "word" else "character" if self.kind == "char" else "piece"
        return f"{len(missing)} {unit}(s) not in the tokenizer's vocabulary: {', '.join(map(repr, missing))}"

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False, unknown: str = "error") -> List[int]:
        """Token ids of ``text``. A piece outside the vocabulary:

        * ``unknown="error"`` (the default): raises a ``ValueError`` that lists them;
        * ``unknown="map"``: becomes ``<unk>``, and a ``UserWarning`` says how many were mapped;
        * ``unknown="unk"``: becomes ``<unk>`` without a word (for code that has checked already).

        Every entry point (this method, :meth:`DataToTextData.encode_pairs` and
        :meth:`~DataToTextData.encode_inputs`, :mod:`distilkit.userdata`, the command line)
        refuses unknown pieces unless told to map them. Check a text first with
        :meth:`unknown_pieces`."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if unknown not in UNKNOWN_CHOICES:
            raise ValueError(f"unknown must be one of {', '.join(map(repr, UNKNOWN_CHOICES))}, got {unknown!r}")
        pieces = self.split(text)
        if unknown != "unk":
            missing = list(dict.fromkeys(p for p in pieces if p not in self.stoi))
            if missing and unknown == "error":
                raise ValueError(self.describe_unknown(missing))
            if missing:
                count = sum(p not in self.stoi for p in pieces)
                warnings.warn(f"{count} piece(s) mapped to {UNK} ({self.describe_unknown(missing)})", stacklevel=2)
        ids = [self.stoi.get(p, self.unk_id) for p in pieces]
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def decode(self, ids: Iterable[int], strip_special: bool = True) -> str:
        pieces = []
        for i in ids:
            i = int(i)
            if strip_special and i == self.eos_id:
                break
            if strip_special and i in (self.pad_id, self.bos_id):
                continue
            if not 0 <= i < len(self.itos):
                raise ValueError(f"token id {i} is outside the vocabulary [0, {len(self.itos)})")
            pieces.append(self.itos[i])
        return self.join(pieces)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tokens": self.itos}

    def save(self, path: Union[str, Path]) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), ensure_ascii=False))

    def __eq__(self, other) -> bool:
        return isinstance(other, Tokenizer) and self.to_dict() == other.to_dict()


class WordTokenizer(Tokenizer):
    """Lower-cased words and punctuation as separate tokens; ``decode(encode(s))`` gives back
    the normalised text (single spaces, no space before punctuation)."""

    kind = "word"
    _re = re.compile(r"[a-z0-9£]+(?:['-][a-z0-9]+)*|[^\sa-z0-9£]")

    def split(self, text: str) -> List[str]:
        return self._re.findall(text.lower())

    def join(self, pieces: List[str]) -> str:
        out = ""
        for p in pieces:
            if out and not re.fullmatch(r"[.,!?;:]", p):
                out += " "
            out += p
        return out

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "WordTokenizer":
        probe = cls(list(SPECIALS))
        vocab = sorted({w for t in texts for w in probe.split(t)})
        return cls(list(SPECIALS) + vocab)


class CharTokenizer(Tokenizer):
    """One token per character; round-trips exactly for characters seen when it was built."""

    kind = "char"

    def split(self, text: str) -> List[str]:
        return list(text)

    def join(self, pieces: List[str]) -> str:
        return "".join(p if p not in SPECIALS else "" for p in pieces)

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "CharTokenizer":
        chars = sorted({c for t in texts for c in t})
        return cls(list(SPECIALS) + chars)


def tokenizer_from_dict(d: dict) -> Tokenizer:
    if not isinstance(d, dict) or "kind" not in d or "tokens" not in d:
        raise ValueError("a tokenizer description needs 'kind' and 'tokens'")
    kinds = {"word": WordTokenizer, "char": CharTokenizer}
    if d["kind"] not in kinds:
        raise ValueError(f"unknown tokenizer kind {d['kind']!r}; expected one of {sorted(kinds)}")
    tokens = d["tokens"]
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise ValueError(f"a tokenizer's 'tokens' must be a list of strings, got {type(tokens).__name__}")
    return kinds[d["kind"]](tokens)


def load_tokenizer(path: Union[str, Path]) -> Tokenizer:
    """Load a tokenizer written by ``tokenizer.save(path)``."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"tokenizer file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"tokenizer file {path} is not valid JSON: {exc}") from None
    try:
        return tokenizer_from_dict(d)
    except ValueError as exc:
        raise ValueError(f"tokenizer file {path}: {exc}") from None


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
