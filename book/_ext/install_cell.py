"""The first cell of every chapter notebook: install ``distilkit`` where it is missing.

A notebook opened from a launch button (Colab, Binder) or downloaded on its own runs in an
environment that may not have the package.  Its first cell therefore checks whether
``distilkit`` can be imported and, if not, installs it with pip from the repository named
by ``repository.url`` / ``repository.branch`` in ``_config.yml`` (the one place that names
the repository).  The environment variable ``DISTILKIT_INSTALL_SOURCE`` overrides the
source (a local clone, a wheel, another branch) -- the tests use it to install from the
working tree.  The cell carries the ``remove-cell`` tag, so the HTML book does not show it.

Run ``python book/_ext/install_cell.py`` after changing the repository setting: it
rewrites (or inserts) that cell in every ``book/*.ipynb``.  ``--check`` only reports the
notebooks whose cell is out of date (exit status 1); tests/test_notebooks_committed.py
runs the same check.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "_config.yml"
BOOK = ROOT / "book"
MARKER = "# Colab / Binder: install distilkit if this environment does not have it."
TAGS = ["remove-cell"]


def repository_source(config_path: Path = CONFIG) -> str:
    """``git+<repository.url>@<repository.branch>`` read from the book's _config.yml."""
    import yaml  # PyYAML: a dependency of jupyter-book

    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    repository = config.get("repository") or {}
    url = str(repository.get("url", "")).rstrip("/")
    if not re.match(r"^https?://\S+$", url):
        raise ValueError(f"repository.url in {config_path} must be an http(s) URL, got {url!r}")
    branch = str(repository.get("branch") or "main")
    return f"git+{url}@{branch}"


def install_cell_source(source: str) -> str:
    """The code of the install cell for pip source ``source``."""
    return "\n".join([
        MARKER,
        "# (Set DISTILKIT_INSTALL_SOURCE to install from elsewhere, e.g. a local clone.)",
        "import importlib.util",
        "import os",
        "",
        'if importlib.util.find_spec("distilkit") is None:',
        "    DISTILKIT_SOURCE = os.environ.get(",
        f'        "DISTILKIT_INSTALL_SOURCE", "{source}"',
        "    )",
        '    %pip install --quiet "{DISTILKIT_SOURCE}"',
        "    importlib.invalidate_caches()",
    ])


def _source_of(cell: dict) -> str:
    src = cell.get("source", "")
    return src if isinstance(src, str) else "".join(src)


def has_install_cell(notebook: dict) -> bool:
    cells = notebook.get("cells", [])
    return bool(cells) and cells[0].get("cell_type") == "code" and _source_of(cells[0]).startswith(MARKER)


def check_notebook(path: Path, source: Optional[str] = None) -> List[str]:
    """Problems with the install cell of one notebook ([] when it is up to date)."""
    expected = install_cell_source(source or repository_source())
    notebook = json.loads(path.read_text(encoding="utf-8"))
    if not has_install_cell(notebook):
        return [f"{path.name}: the first cell is not the install cell"]
    cell = notebook["cells"][0]
    problems = []
    if _source_of(cell) != expected:
        problems.append(f"{path.name}: the install cell does not match _config.yml "
                        "(run python book/_ext/install_cell.py)")
    if not set(TAGS) <= set(cell.get("metadata", {}).get("tags", [])):
        problems.append(f"{path.name}: the install cell lacks the tags {TAGS}")
    return problems


def update_notebook(path: Path, source: Optional[str] = None) -> bool:
    """Write the current install cell into ``path``; True if the file changed.

    A new cell is stored unexecuted: execute the notebook again afterwards.
    """
    text = path.read_text(encoding="utf-8")
    notebook = json.loads(text)
    lines = install_cell_source(source or repository_source()).splitlines(keepends=True)
    if has_install_cell(notebook):
        cell = notebook["cells"][0]
        cell["source"] = lines
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        tags.extend(t for t in TAGS if t not in tags)
    else:
        notebook["cells"].insert(0, {"cell_type": "code", "id": "install-distilkit",
                                     "execution_count": None,
                                     "metadata": {"tags": list(TAGS)}, "outputs": [],
                                     "source": lines})
    new_text = json.dumps(notebook, indent=1, ensure_ascii=False, sort_keys=True) + "\n"
    if new_text == text:
        return False
    path.write_text(new_text, encoding="utf-8")
    return True


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report, change nothing")
    args = parser.parse_args(argv)
    source = repository_source()
    notebooks = sorted(BOOK.glob("*.ipynb"))
    if args.check:
        problems = [p for nb in notebooks for p in check_notebook(nb, source)]
        print("\n".join(problems) or f"all {len(notebooks)} install cells match {source}")
        return 1 if problems else 0
    for nb in notebooks:
        if update_notebook(nb, source):
            print(f"updated {nb.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
