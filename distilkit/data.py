"""Data: the built-in data-to-text task, an English text corpus, and batching (the tokenizers
live in :mod:`distilkit.tokenizers` and are re-exported here).

Nothing here downloads anything. The data-to-text task is generated from a seed (in the
style of the E2E NLG challenge, Novikova et al. 2017); the language-modelling corpus defaults
to ``pydoc_data.topics``, the help texts that ship with CPython, or any text file.
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from .batching import IGNORE_INDEX, BatchIterator, LMBatch, Seq2SeqBatch, collate_lm, collate_seq2seq

__all__ = [
    "PAD",
    "BOS",
    "EOS",
    "UNK",
    "IGNORE_INDEX",
    "Tokenizer",
    "WordTokenizer",
    "CharTokenizer",
    "load_tokenizer",
    "DataToTextTask",
    "DataToTextData",
    "make_data_to_text",
    "linearize_mr",
    "extract_slots",
    "load_text_corpus",
    "Seq2SeqBatch",
    "LMBatch",
    "collate_seq2seq",
    "collate_lm",
    "lm_examples",
    "BatchIterator",
]

from .tokenizers import (  # noqa: F401  (re-exported: distilkit.data is where users import them)
    BOS,
    EOS,
    PAD,
    SPECIALS,
    UNK,
    UNKNOWN_CHOICES,
    CharTokenizer,
    Tokenizer,
    WordTokenizer,
    load_tokenizer,
    tokenizer_from_dict,
)

# ============================================================================ data-to-text
# The lexicon: every attribute value has one or more surface forms. Surface forms are unique
# across the whole lexicon, so slots can be read back from a text exactly (slot error rate).
NAMES = [
    "the eagle", "the mill", "blue spice", "the punter", "green man", "the phoenix", "zizzi",
    "aromi", "the vaults", "cocum", "the wrestlers", "giraffe", "the cricketers", "loch fyne",
    "the rice boat", "wildwood", "clowns", "the plough", "browns cambridge", "fitzbillies",
    "the golden curry", "alimentum", "midsummer house", "strada", "taste of cambridge",
    "the waterman", "cotto", "bibimbap house", "the dumpling tree", "the olive grove",
    "travellers rest beefeater", "the twenty two", "the cambridge blue", "red lion", "the copper pot",
    "saffron court", "the little fox", "hazel tree", "the blue door", "marlowe's",
]
NEAR = [
    "the bakers", "crowne plaza hotel", "burger king", "the sorrento", "all bar one",
    "yippee noodle bar", "café rouge", "raja indian cuisine", "avalon", "the portland arms",
    "express by holiday inn", "rainbow vegetarian café", "café sicilia", "ranch", "the six bells",
    "clare hall", "the bridge", "the market square", "the old station", "the bell tower",
]
FOOD = ["italian", "french", "chinese", "indian", "japanese", "english", "american", "mexican",
        "thai", "spanish", "greek", "korean"]
EAT_TYPE = ["restaurant", "pub", "coffee shop", "bistro", "wine bar"]
PRICE = {
    "cheap": ["cheap", "low-priced"],
    "moderate": ["moderately priced", "mid-priced"],
    "expensive": ["expensive", "high-priced"],
    "luxury": ["luxury-priced", "very expensive"],
}
AREA = ["city centre", "riverside", "old town", "harbour", "university quarter", "north end"]
RATING = ["1 out of 5", "2 out of 5", "3 out of 5", "4 out of 5", "5 out of 5"]
FAMILY = {"yes": ["family friendly", "kid friendly"], "no": ["not family friendly", "adults only"]}
HOURS = {"late": ["open late", "open until midnight"], "early": ["closed in the evening", "closed after 8 pm"]}

ATTRIBUTES = ("name", "eat_type", "food", "price", "area", "rating", "family", "near", "hours")
OPTIONAL = ATTRIBUTES[1:]

# clause templates per attribute; {n} = name or a pronoun subject, {v} = value surface form
TEMPLATES: Dict[str, List[str]] = {
    "eat_type": ["{n} is a {v}", "{n} is a {v} venue", "{n} is run as a {v}"],
    "food": ["{n} serves {v} food", "{n} offers {v} dishes", "{n} has a {v} menu",
             "{n} specialises in {v} cuisine", "{n} cooks {v} food"],
    "price": ["{n} is {v}", "{n} has {v} meals", "{n} is a {v} choice", "{n} is a {v} place"],
    "area": ["{n} is in the {v}", "{n} is located in the {v} area", "{n} can be found in the {v}",
             "{n} sits in the {v}"],
    "rating": ["{n} is rated {v}", "{n} has a customer rating of {v}", "customers rate {n} {v}",
               "{n} holds a rating of {v}"],
    "family": ["{n} is {v}", "{n} is described as {v}", "{n} is considered {v}"],
    "near": ["{n} is near {v}", "{n} is close to {v}", "{n} is just by {v}", "{n} stands next to {v}"],
    "hours": ["{n} is {v}", "{n} is usually {v}", "on weekdays {n} is {v}"],
}
PRONOUNS = ["it", "the venue", "this place"]


def _surface_forms(attribute: str, value: str) -> List[str]:
    table = {"price": PRICE, "family": FAMILY, "hours": HOURS}
    if attribute in table:
        return table[attribute][value]
    return [value]


def _values(attribute: str) -> List[str]:
    return {
        "name": NAMES, "near": NEAR, "food": FOOD, "eat_type": EAT_TYPE, "area": AREA,
        "rating": RATING, "price": list(PRICE), "family": list(FAMILY), "hours": list(HOURS),
    }[attribute]


def linearize_mr(mr: Dict[str, str]) -> str:
    """The model input for a meaning representation: ``name : the eagle | food : thai | ...``."""
    return " | ".join(f"{a} : {mr[a]}" for a in ATTRIBUTES if a in mr)


_WORDS = WordTokenizer(list(SPECIALS))


def _lexicon_forms() -> List[Tuple[str, str, str]]:
    forms = []
    for a in ATTRIBUTES:
        for v in _values(a):
            for f in _surface_forms(a, v):
                forms.append((" " + " ".join(_WORDS.split(f)) + " ", a, v))
    return sorted(forms, key=lambda x: -len(x[0]))


_FORMS = _lexicon_forms()


def extract_slots(text: str) -> Dict[str, set]:
    """Read the attribute values that a text mentions, using the task's lexicon.

    Returns ``{attribute: {values}}``. Longer surface forms are matched first and removed, so
    ``not family friendly`` is not also read as ``family friendly``.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    s = " " + " ".join(_WORDS.split(text)) + " "
    found: Dict[str, set] = {}
    for form, a, v in _FORMS:
        while form in s:
            found.setdefault(a, set()).add(v)
            s = s.replace(form, " # ", 1)
    return found


@dataclass
class DataToTextTask:
    """A seeded generator of meaning representations (MRs) and their English descriptions.

    Each MR has a name and ``min_slots``..``max_slots`` further attributes. A description
    mentions every attribute once, in a random order, with a random phrasing, split into one to
    three sentences, so one MR has many correct descriptions.
    """

    min_slots: int = 3
    max_slots: int = 7

    def __post_init__(self):
        for name in ("min_slots", "max_slots"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= len(OPTIONAL):
                raise ValueError(f"{name} must be an int from 0 to {len(OPTIONAL)} (the optional attributes), "
                                 f"got {v!r}")
        if self.min_slots > self.max_slots:
            raise ValueError(f"min_slots ({self.min_slots}) must not exceed max_slots ({self.max_slots})")

    def sample_mr(self, rng: random.Random) -> Dict[str, str]:
        k = rng.randint(self.min_slots, self.max_slots)
        chosen = rng.sample(OPTIONAL, k)
        mr = {"name": rng.choice(NAMES)}
        for a in ATTRIBUTES[1:]:
            if a in chosen:
                mr[a] = rng.choice(_values(a))
        return mr

    def realise(self, mr: Dict[str, str], rng: random.Random) -> str:
        slots = [a for a in ATTRIBUTES[1:] if a in mr]
        rng.shuffle(slots)
        n_sent = min(len(slots), rng.choice([1, 2, 2, 3]))
        cuts = sorted(rng.sample(range(1, len(slots)), n_sent - 1)) if n_sent > 1 else []
        groups = [slots[i:j] for i, j in zip([0] + cuts, cuts + [len(slots)])]
        sentences = []
        for gi, group in enumerate(groups):
            clauses = []
            for ci, a in enumerate(group):
                subject = mr["name"] if (gi == 0 and ci == 0) else rng.choice(PRONOUNS)
                if ci > 0:
                    subject = "it"
                value = rng.choice(_surface_forms(a, mr[a]))
                template = rng.choice(TEMPLATES[a])
                clause = template.format(n=subject, v=value)
                clauses.append(clause)
            if len(clauses) == 1:
                sentence = clauses[0]
            else:
                sentence = " , ".join(clauses[:-1]) + " and " + clauses[-1]
            sentences.append(sentence.strip(" ,") + " .")
        text = " ".join(sentences)
        if len(slots) == 0:
            text = f"{mr['name']} is a place to eat ."
        return _WORDS.join(_WORDS.split(text))


def _fresh_mr(task: "DataToTextTask", rng: random.Random, seen: set) -> Dict[str, str]:
    """A sampled MR whose linearisation is not in ``seen`` (which it joins)."""
    while True:
        mr = task.sample_mr(rng)
        key = linearize_mr(mr)
        if key not in seen:
            seen.add(key)
            return mr


def _unseen_mr(task: "DataToTextTask", rng: random.Random, excluded: frozenset) -> Dict[str, str]:
    """A sampled MR whose linearisation is not in ``excluded`` (repeats among draws allowed)."""
    while True:
        mr = task.sample_mr(rng)
        if linearize_mr(mr) not in excluded:
            return mr


class _GeneratedPairs(Sequence):
    """A list of (mr, text) pairs generated on first use.

    ``make_data_to_text`` draws the teacher's 40,000 pairs last, from the random state the other
    splits leave behind; generating them takes seconds and only teacher training reads them, so
    the state is kept and the pairs are drawn when first indexed or iterated (the same pairs as
    drawing them at once). ``len`` needs no generation. No MR of another split occurs here; an
    MR may occur more than once (with its own description each time), since the teacher's task
    includes one-attribute inputs, of which there are only a few thousand."""

    def __init__(self, task: "DataToTextTask", rng_state, excluded: set, n: int):
        self._args, self._n, self._pairs = (task, rng_state, frozenset(excluded)), n, None

    def _get(self) -> list:
        if self._pairs is None:
            task, state, excluded = self._args
            rng = random.Random()
            rng.setstate(state)
            pairs = [(mr, task.realise(mr, rng)) for mr in (_unseen_mr(task, rng, excluded) for _ in range(self._n))]
            self._pairs, self._args = pairs, None
        return self._pairs

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index):
        return self._get()[index]

    def __iter__(self):
        return iter(self._get())

    def __eq__(self, other) -> bool:
        if isinstance(other, (_GeneratedPairs, list)):
            return len(self) == len(other) and list(self) == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        state = "generated" if self._pairs is not None else "not generated yet"
        return f"<{self._n:,} generated (mr, text) pairs, {state}>"


@dataclass
class DataToTextData:
    """Fixed splits of the data-to-text task.

    * ``train``: (mr, text) pairs with one reference each -- the small labelled set;
    * ``transfer``: MRs with no reference -- inputs a teacher can label;
    * ``valid``: (mr, text) pairs; ``test``: (mr, [references]) with ``num_refs`` each;
    * ``test_by_size``: ``{k: [(mr, [references]), ...]}``, ``num_test_per_size`` MRs with exactly
      ``k`` attributes besides the name, for every ``k`` the teacher's task draws (1 to all 8):
      how a model copes with inputs smaller or larger than the students' task has;
    * ``teacher_train``: a large labelled set, used only to train the teacher. Its MRs come from
      ``teacher_task`` (by default 1 to all 8 attributes besides the name, a wider range than the
      students' 3 to 7), so the teacher has seen every input size a user can give it.
    """

    train: List[Tuple[Dict[str, str], str]]
    transfer: List[Dict[str, str]]
    valid: List[Tuple[Dict[str, str], str]]
    test: List[Tuple[Dict[str, str], List[str]]]
    teacher_train: Sequence[Tuple[Dict[str, str], str]]  # generated when first read
    tokenizer: WordTokenizer
    seed: int = 0
    info: dict = field(default_factory=dict)
    test_by_size: Dict[int, List[Tuple[Dict[str, str], List[str]]]] = field(default_factory=dict)

    def encode_pairs(self, pairs: Sequence[Tuple[Dict[str, str], str]],
                     unknown: str = "error") -> List[Tuple[List[int], List[int]]]:
        """``(input ids, target ids)`` per ``(mr, text)`` pair; the target ends in ``<eos>``.

        ``unknown="error"`` (the default): a word outside the task's vocabulary (in an attribute
        value or the text) is an error naming the pair (``pairs[i]``) and the words; ``"map"``:
        they become ``<unk>``, with one warning that counts them; ``"unk"``: they become ``<unk>``
        without a word. An attribute the task does not know is always an error."""
        _check_unknown_option(unknown, allow_unk=True)
        texts = [(linearize_mr(mr), t) for mr, t in _checked_pairs(pairs)]
        if unknown != "unk":
            _refuse_unknown(self.tokenizer, ((f"pairs[{i}] {side}", x) for i, pair in enumerate(texts)
                                             for side, x in zip(("mr", "text"), pair)), unknown)
        tok = self.tokenizer
        return [(tok.encode(m, unknown="unk"), tok.encode(t, add_eos=True, unknown="unk")) for m, t in texts]

    def encode_inputs(self, mrs: Sequence[Dict[str, str]], unknown: str = "error") -> List[List[int]]:
        """Input ids per meaning representation; a word outside the vocabulary is an error naming
        ``mrs[i]`` and the words (``unknown="map"``: ``<unk>``, with a warning that counts them)."""
        _check_unknown_option(unknown)
        texts = [linearize_mr(_checked_mr(mr, i)) for i, mr in enumerate(mrs)]
        _refuse_unknown(self.tokenizer, ((f"mrs[{i}]", x) for i, x in enumerate(texts)), unknown)
        return [self.tokenizer.encode(x, unknown="unk") for x in texts]


def _check_unknown_option(unknown: str, allow_unk: bool = False) -> None:
    choices = ("error", "map", "unk") if allow_unk else ("error", "map")
    if unknown not in choices:
        raise ValueError(f"unknown must be one of {', '.join(map(repr, choices))}, got {unknown!r}")


def _checked_mr(mr, i: int) -> Dict[str, str]:
    if not isinstance(mr, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in mr.items()):
        raise TypeError(f"mrs[{i}] must be a dict of attribute -> value strings, got {mr!r}")
    extra = [a for a in mr if a not in ATTRIBUTES]
    if extra:
        raise ValueError(f"mrs[{i}] has attribute(s) {extra} that the task does not know (they would be "
                         f"left out of the input); it knows {', '.join(ATTRIBUTES)}")
    return mr


def _checked_pairs(pairs) -> list:
    out = []
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[1], str)):
            raise TypeError(f"pairs[{i}] must be an (mr, text) pair with a str text, got {pair!r}")
        out.append((_checked_mr(pair[0], i), pair[1]))
    return out


def _refuse_unknown(tok: Tokenizer, texts: Iterable[Tuple[str, str]], unknown: str) -> None:
    """Raise on the first text with pieces outside ``tok``'s vocabulary (``unknown="error"``), or
    warn once with their count (``"map"``). ``texts``: (where, text) pairs."""
    mapped, where_mapped, words = 0, 0, {}
    for where, text in texts:
        missing = tok.unknown_pieces(text)
        if not missing:
            continue
        if unknown == "error":
            raise ValueError(f"{where}: {tok.describe_unknown(missing)}; the model can only read what its "
                             f"tokenizer knows ({len(tok)} entries); unknown='map' maps them to {UNK}")
        mapped += sum(p not in tok.stoi for p in tok.split(text))
        where_mapped += 1
        words.update(dict.fromkeys(missing))
    if mapped:
        warnings.warn(f"unknown='map': {mapped} piece(s) in {where_mapped} text(s) mapped to {UNK} "
                      f"({tok.describe_unknown(list(words))})", stacklevel=3)


def _all_lexicon_text() -> List[str]:
    texts = [" ".join(TEMPLATES[a]) for a in TEMPLATES] + [" ".join(PRONOUNS)]
    for a in ATTRIBUTES:
        texts.append(a)
        for v in _values(a):
            texts.append(v)
            texts.extend(_surface_forms(a, v))
    texts.append("| : . , and is a place to eat")
    return texts


def make_data_to_text(
    seed: int = 0,
    num_train: int = 400,
    num_transfer: int = 6000,
    num_valid: int = 200,
    num_test: int = 400,
    num_refs: int = 8,
    num_teacher_train: int = 40000,
    task: Optional[DataToTextTask] = None,
    teacher_task: Optional[DataToTextTask] = None,
    num_test_per_size: int = 50,
) -> DataToTextData:
    """Generate the data-to-text splits. The same arguments always give the same data, and no
    test MR occurs in any training split.

    ``task`` draws the students' splits (default: name + 3 to 7 attributes); ``teacher_task`` the
    teacher's (default: name + 1 to 8, every size). ``test_by_size`` holds ``num_test_per_size``
    test MRs of each size ``teacher_task`` draws."""
    for name, value in [("num_train", num_train), ("num_valid", num_valid), ("num_test", num_test),
                        ("num_refs", num_refs)]:
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    for name, value in [("num_transfer", num_transfer), ("num_teacher_train", num_teacher_train),
                        ("num_test_per_size", num_test_per_size)]:
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    task = task or DataToTextTask()
    teacher_task = teacher_task or DataToTextTask(min_slots=1, max_slots=len(OPTIONAL))
    for name, t in [("task", task), ("teacher_task", teacher_task)]:
        if not isinstance(t, DataToTextTask):
            raise TypeError(f"{name} must be a DataToTextTask, got {type(t).__name__}")
    rng = random.Random(seed)
    seen = set()

    def fresh_mr():
        return _fresh_mr(task, rng, seen)

    test = []
    for _ in range(num_test):
        mr = fresh_mr()
        test.append((mr, [task.realise(mr, rng) for _ in range(num_refs)]))
    valid = [(mr, task.realise(mr, rng)) for mr in (fresh_mr() for _ in range(num_valid))]
    train = [(mr, task.realise(mr, rng)) for mr in (fresh_mr() for _ in range(num_train))]
    transfer = [fresh_mr() for _ in range(num_transfer)]
    test_by_size = {}
    for k in range(teacher_task.min_slots, teacher_task.max_slots + 1):
        sized = DataToTextTask(min_slots=k, max_slots=k)
        mrs = [_fresh_mr(sized, rng, seen) for _ in range(num_test_per_size)]
        test_by_size[k] = [(mr, [sized.realise(mr, rng) for _ in range(num_refs)]) for mr in mrs]
    teacher_train = _GeneratedPairs(teacher_task, rng.getstate(), seen, num_teacher_train)  # drawn when first read
    tokenizer = WordTokenizer.from_texts(_all_lexicon_text() + [t for _, t in train])
    return DataToTextData(
        train=train, transfer=transfer, valid=valid, test=test, teacher_train=teacher_train,
        tokenizer=tokenizer, seed=seed, test_by_size=test_by_size,
        info={"num_train": num_train, "num_transfer": num_transfer, "num_valid": num_valid,
              "num_test": num_test, "num_refs": num_refs, "num_teacher_train": num_teacher_train,
              "num_test_per_size": num_test_per_size,
              "slots": [task.min_slots, task.max_slots],
              "teacher_slots": [teacher_task.min_slots, teacher_task.max_slots]},
    )


# ============================================================================ LM corpus
def load_text_corpus(path: Optional[Union[str, Path]] = None, max_chars: Optional[int] = None) -> str:
    """English text for language modelling: the file at ``path``, or by default the help
    topics that ship with CPython (``pydoc_data.topics``, about 465 KB)."""
    if path is None:
        from pydoc_data import topics

        text = "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
    else:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"corpus path {p} is not a file")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"corpus file {p} is not UTF-8 text: {exc}") from None
    if not text.strip():
        raise ValueError(f"corpus {path or 'pydoc_data.topics'} is empty")
    return text[:max_chars] if max_chars else text


def lm_examples(ids: Sequence[int], block_size: int, stride: Optional[int] = None) -> List[List[int]]:
    """Cut a token stream into windows of ``block_size + 1`` tokens (input + shifted target)."""
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    stride = stride or block_size
    n = len(ids)
    if n < block_size + 1:
        raise ValueError(f"the corpus has {n} tokens, fewer than block_size + 1 = {block_size + 1}")
    return [list(ids[i : i + block_size + 1]) for i in range(0, n - block_size, stride)]


