"""Bibliography entries labelled the way the text cites them: author and year.

The chapters cite author-year (``bibtex_reference_style: author_year`` in ``_config.yml``:
"Hinton et al. [2015]"), but pybtex's ``plain`` style labels the bibliography's entries with
numbers ("[1]"), so a reader finds "[12]" where the text said "Hinton et al.". This extension
registers the pybtex formatting style ``author_year``: the ``plain`` style's entries, sorted by
author, year and title, each labelled "Hinton et al., 2015" (one author: "Radford, 2019"; two:
"Kim and Rush, 2016"), with a, b, ... after the year where two entries would share a label.
``_config.yml`` selects it with ``bibtex_default_style: author_year``.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Iterator

from pybtex.plugin import register_plugin
from pybtex.style.formatting.plain import Style as PlainStyle
from pybtex.style.labels import BaseLabelStyle


def _last_names(person) -> str:
    return " ".join(part.render_as("text") for part in person.rich_last_names)


def author_year_label(entry) -> str:
    """``"Hinton et al., 2015"`` for an entry (its authors, else its editors)."""
    people = entry.persons.get("author") or entry.persons.get("editor") or []
    names = [_last_names(p) for p in people]
    if not names:
        who = entry.fields.get("organization") or entry.fields.get("title", entry.key)
    elif len(names) == 1:
        who = names[0]
    elif len(names) == 2:
        who = f"{names[0]} and {names[1]}"
    else:
        who = f"{names[0]} et al."
    return f"{who}, {entry.fields.get('year', 'n.d.')}"


class AuthorYearLabelStyle(BaseLabelStyle):
    def format_labels(self, sorted_entries: Iterable) -> Iterator[str]:
        labels = [author_year_label(e) for e in sorted_entries]
        total, seen = Counter(labels), Counter()
        for label in labels:
            if total[label] > 1:
                seen[label] += 1
                yield label + "abcdefghijklmnopqrstuvwxyz"[seen[label] - 1]
            else:
                yield label


class AuthorYearStyle(PlainStyle):
    default_label_style = AuthorYearLabelStyle
    default_sorting_style = "author_year_title"


def setup(app):
    register_plugin("pybtex.style.formatting", "author_year", AuthorYearStyle)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
