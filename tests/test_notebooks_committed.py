"""The book's notebooks are committed *executed*, cleanly, so that what a reader sees is what
nbval re-checks. nbval compares stored outputs with a fresh run -- a cell committed with no
output compares as "nothing to check", so an unexecuted notebook would pass it silently. This
module checks the committed files themselves, for every ``book/*.ipynb``:

* valid JSON and a valid nbformat-4 notebook;
* every code cell with source was executed (``execution_count`` set), top to bottom in one
  fresh kernel (counts 1, 2, 3, ...);
* a cell that must show something has stored outputs: it prints / displays, draws a figure
  (then an ``image/png`` is stored, or a widget that holds it), or ends in an expression that is not a call (a call may
  return None and show nothing) and not silenced with ``;``;
* no ``error`` output, no ``Traceback`` in stream output;
* no memory address (``0x`` + 6 or more hex digits) in text outputs;
* no leaked object reprs: ``<Figure size``, ``<matplotlib.``, ``<Line2D``, ``<Axes`` in stream
  text, in an ``execute_result``, or in a ``display_data`` that has no image (a figure's
  ``display_data`` carries ``<Figure size ...>`` as its text/plain fallback next to the PNG:
  that one is not shown and is fine);
* no nbval comment marker (``# NBVAL_IGNORE_OUTPUT``, ``# NBVAL_SKIP``, ...) in the code,
  where readers of the book would see it: the cell tags ``nbval-ignore-output`` /
  ``nbval-skip`` do the same, hidden, and a tagged cell starts with a comment saying why;
* nbval still compares most of each notebook: fewer than half of its code cells carry such
  a tag (a cell whose output depends on the processor, e.g. a trained model's scores, is
  tagged and asserts what the text claims instead);
* no noise in the static pages: no progress bars among the stored outputs (a tqdm widget or
  text bar would show the executing machine's timings), no ``noqa`` pragmas in the code, and
  no code line longer than 88 characters (the width of the page's code column).

Further down: every notebook starts with the hidden install cell generated from ``_config.yml``
(book/_ext/install_cell.py), and that cell, run in a fresh virtual environment outside the
repository, makes ``distilkit`` importable.

Skipped while ``book/`` has no notebook.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

BOOK = Path(__file__).resolve().parent.parent / "book"
NOTEBOOKS = sorted(BOOK.glob("*.ipynb"))

ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")
LEAKED_REPR = re.compile(r"<Figure size|<matplotlib\.|<Line2D|<Axes[:\s>]|<AxesSubplot")
SHOWS = re.compile(r"\bprint\(|\bdisplay\(|\bplt\.show\(|\bIPython\.display")
FIGURE = re.compile(r"\bplt\.(subplots|figure|plot|imshow|bar|barh|hist|scatter)\(")
WIDGET = "application/vnd.jupyter.widget-view+json"
MARKERS = ("NBVAL_IGNORE_OUTPUT", "NBVAL_SKIP")
MARKER_COMMENT = re.compile(r"#.*\bNBVAL_[A-Z_]+")
PROGRESS_BAR = re.compile(r"\d+%\|.*\|\s*\d+/\d+|\bit/s\]|s/it\]")
MAX_CODE_LINE = 88
MARKER_TAGS = {"nbval-ignore-output", "nbval-skip"}


def _text(value) -> str:
    return value if isinstance(value, str) else "".join(value)


def _python_only(source: str) -> str:
    """Drop IPython magics and shell escapes so that the rest parses as Python."""
    return "\n".join("" if ln.lstrip().startswith(("%", "!")) else ln for ln in source.splitlines())


def _ends_in_visible_expression(source: str) -> bool:
    try:
        tree = ast.parse(_python_only(source))
    except SyntaxError:
        return False
    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        return False
    last = tree.body[-1].value
    if isinstance(last, (ast.Call, ast.Await, ast.Yield, ast.YieldFrom)) or (
            isinstance(last, ast.Constant) and last.value is None):
        return False
    code_lines = [ln for ln in source.rstrip().splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return not (code_lines and code_lines[-1].split("#", 1)[0].rstrip().endswith(";"))


def _text_outputs(output: dict):
    """(where, text) pairs of the textual parts of one output."""
    kind = output.get("output_type")
    if kind == "stream":
        yield f"stream {output.get('name')}", _text(output.get("text", ""))
    elif kind in ("display_data", "execute_result"):
        data = output.get("data", {})
        for mime in ("text/plain", "text/html", "text/markdown", "text/latex"):
            if mime in data:
                yield f"{kind} {mime}", _text(data[mime])


def notebook_problems(path: Path) -> list:
    problems = []
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [f"not valid JSON: {exc}"]
    try:
        import nbformat

        nbformat.validate(nbformat.from_dict(nb))
    except ImportError:  # pragma: no cover - nbformat comes with the book extra
        pass
    except Exception as exc:  # nbformat.ValidationError and friends
        problems.append(f"not a valid notebook: {str(exc).splitlines()[0]}")
    if nb.get("nbformat") != 4:
        problems.append(f"nbformat {nb.get('nbformat')}, expected 4")
    code = [c for c in nb.get("cells", []) if c.get("cell_type") == "code"
            and _text(c.get("source", "")).strip()]
    if code and all(c.get("execution_count") is None and not c.get("outputs") for c in code):
        return problems + [f"committed without being executed: none of its {len(code)} code cells "
                           "has an execution count or an output"]
    counts = []
    ignored = [c for c in code if set(c.get("metadata", {}).get("tags", [])) & MARKER_TAGS]
    if code and 2 * len(ignored) >= len(code):
        problems.append(f"{len(ignored)} of {len(code)} code cells are kept out of nbval's "
                        "comparison (nbval-ignore-output / nbval-skip): most must be compared")
    for index, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        source = _text(cell.get("source", ""))
        where = f"cell {index} ({source.strip().splitlines()[0][:50] if source.strip() else 'empty'!r})"
        outputs = cell.get("outputs", [])
        if not source.strip():
            continue
        count = cell.get("execution_count")
        if count is None:
            problems.append(f"{where}: never executed (execution_count is null)")
        else:
            counts.append(count)
        images = any("image/png" in o.get("data", {}) or "image/svg+xml" in o.get("data", {})
                     for o in outputs)
        if SHOWS.search(source) and not outputs:
            problems.append(f"{where}: prints or displays, but no output is stored")
        widgets = any(WIDGET in o.get("data", {}) for o in outputs)
        if FIGURE.search(source) and not images and not widgets:  # a widget stores its figure
            problems.append(f"{where}: draws a figure, but no image is stored")  # in its state
        if _ends_in_visible_expression(source) and not outputs:
            problems.append(f"{where}: ends in an expression, but no output is stored")
        for output in outputs:
            if output.get("output_type") == "error":
                problems.append(f"{where}: error output {output.get('ename')}: {output.get('evalue')}")
            for part, text in _text_outputs(output):
                if "Traceback" in text and part.startswith("stream"):
                    problems.append(f"{where}: Traceback in {part}")
                if ADDRESS.search(text):
                    problems.append(f"{where}: memory address {ADDRESS.search(text).group()} in {part}")
                figure_fallback = (output.get("output_type") == "display_data" and images
                                   and part.endswith("text/plain"))
                if LEAKED_REPR.search(text) and not figure_fallback:
                    problems.append(f"{where}: leaked repr {LEAKED_REPR.search(text).group()!r} in {part}")
        for output in outputs:
            text = " ".join(t for _, t in _text_outputs(output))
            if PROGRESS_BAR.search(text):
                problems.append(f"{where}: a progress bar is stored in the outputs")
        if "noqa" in source:
            problems.append(f"{where}: a noqa pragma in the shown code")
        long_lines = [ln for ln in source.splitlines() if len(ln) > MAX_CODE_LINE]
        if long_lines:
            problems.append(f"{where}: {len(long_lines)} code line(s) longer than {MAX_CODE_LINE} "
                            f"characters, e.g. {long_lines[0].strip()[:40]!r}")
        lines = source.splitlines()
        tags = set(cell.get("metadata", {}).get("tags", []))
        for line in lines:
            if MARKER_COMMENT.search(line):
                problems.append(f"{where}: test marker {line.strip()!r} in the shown code "
                                "(use the cell tag, e.g. nbval-ignore-output)")
        if tags & MARKER_TAGS and not any(ln.strip().startswith("#") and
                                          not any(m in ln for m in MARKERS) for ln in lines[:3]):
            problems.append(f"{where}: tag {sorted(tags & MARKER_TAGS)} without a comment explaining why")
    states = nb.get("metadata", {}).get("widgets", {}).get(
        "application/vnd.jupyter.widget-state+json", {}).get("state", {})
    progress_models = [k for k, v in states.items() if v.get("model_name") == "FloatProgressModel"]
    if progress_models:
        problems.append(f"{len(progress_models)} progress-bar widget(s) (FloatProgressModel, "
                        "tqdm) in the saved widget state")
    if counts and counts != list(range(1, len(counts) + 1)):
        problems.append(f"execution counts {counts} are not 1, 2, 3, ...: not one top-to-bottom run "
                        "in a fresh kernel")
    return problems


@pytest.mark.skipif(not NOTEBOOKS, reason="book/ has no notebooks yet")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_committed_executed_and_clean(path):
    problems = notebook_problems(path)
    assert not problems, f"{path.name}:\n  " + "\n  ".join(problems)


def test_the_checker_catches_what_it_should(tmp_path):
    """The rules above, on a small bad notebook and its good twin."""
    def cell(source, outputs=(), count=None, tags=()):
        return {"cell_type": "code", "execution_count": count, "id": f"c{len(source)}{count}",
                "metadata": {"tags": list(tags)}, "outputs": list(outputs), "source": source}

    def stream(text, name="stdout"):
        return {"output_type": "stream", "name": name, "text": text}

    png = {"output_type": "display_data", "metadata": {},
           "data": {"image/png": "iVBORw0KGgo=", "text/plain": "<Figure size 640x480 with 1 Axes>"}}
    bad = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        cell("import math\nx = 1", count=1),
        cell("print(x)", count=3),  # out of order and no output
        cell("x + 1"),  # never executed, no output
        cell("fig, ax = plt.subplots()\nax.plot([1, 2])", [{"output_type": "execute_result",
             "execution_count": 4, "metadata": {}, "data": {"text/plain":
             "[<matplotlib.lines.Line2D at 0x7f00deadbeef>]"}}], count=4),
        cell("1 / 0", [{"output_type": "error", "ename": "ZeroDivisionError", "evalue": "division by zero",
                        "traceback": []}], count=5),
        cell("print(object())", [stream("<object object at 0x7f1234567890>\n")], count=6),
        cell("import warnings\nprint('x')", [stream("Traceback (most recent call last):\n", "stderr")], count=7),
        cell("# NBVAL_IGNORE_OUTPUT\n# wall-clock time differs between runs\nprint(time.time())",
             [stream("1.0\n")], count=8),
        cell("train(model)", [{"output_type": "display_data", "metadata": {}, "data": {
            WIDGET: {"model_id": "abc", "version_major": 2, "version_minor": 0},
            "text/plain": "student:  40%|####      | 200/500 [00:05<00:07, 40.1it/s]"}}], count=9),
        cell("import distilkit.notebook  # noqa: F401", count=10),
        cell("x = " + "1 + " * 30 + "1", count=11),
        cell("print(time.time())", [stream("2.0\n")], count=12, tags=["nbval-ignore-output"]),
    ]}
    bad["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {
        "abc": {"model_name": "FloatProgressModel", "state": {}}}}}
    (tmp_path / "bad.ipynb").write_text(json.dumps(bad))
    found = "\n".join(notebook_problems(tmp_path / "bad.ipynb"))
    for expected in ("cell 1 ('print(x)'): prints or displays, but no output",
                     "cell 2 ('x + 1'): never executed", "cell 2 ('x + 1'): ends in an expression",
                     "leaked repr '<matplotlib.'", "memory address 0x7f00deadbeef",
                     "error output ZeroDivisionError", "memory address 0x7f1234567890",
                     "Traceback in stream stderr",
                     "test marker '# NBVAL_IGNORE_OUTPUT' in the shown code",
                     "tag ['nbval-ignore-output'] without a comment explaining why",
                     "execution counts [1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]",
                     "draws a figure, but no image", "a progress bar is stored",
                     "a noqa pragma", "longer than 88 characters",
                     "progress-bar widget(s) (FloatProgressModel"):
        assert expected in found, f"{expected!r} not reported:\n{found}"
    good = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        cell("import math\nx = 1", count=1),
        cell("print(x)", [stream("1\n")], count=2),
        cell("x + 1", [{"output_type": "execute_result", "execution_count": 3, "metadata": {},
                        "data": {"text/plain": "2"}}], count=3),
        cell("fig, ax = plt.subplots()\nax.plot([1, 2]);", [png], count=4),
        cell("model.eval()", count=5),  # a call may return None: no output required
        cell("# wall-clock time differs between runs\nprint(time.time())",
             [stream("1.0\n")], count=6, tags=["nbval-ignore-output"]),
    ]}
    (tmp_path / "good.ipynb").write_text(json.dumps(good))
    assert notebook_problems(tmp_path / "good.ipynb") == []
    mostly_ignored = {**good, "cells": good["cells"][:2] + [
        cell(f"# the time differs between runs\nprint({n})", [stream(f"{n}\n")], count=n,
             tags=["nbval-ignore-output"]) for n in (3, 4)]}
    (tmp_path / "mostly_ignored.ipynb").write_text(json.dumps(mostly_ignored))
    assert notebook_problems(tmp_path / "mostly_ignored.ipynb") == [
        "2 of 4 code cells are kept out of nbval's comparison (nbval-ignore-output / "
        "nbval-skip): most must be compared"]
    good["cells"] = [cell("print(1)"), cell("x = 2")]
    (tmp_path / "draft.ipynb").write_text(json.dumps(good))
    assert notebook_problems(tmp_path / "draft.ipynb") == [
        "committed without being executed: none of its 2 code cells has an execution count or an output"]
    (tmp_path / "broken.ipynb").write_text('{"cells": [')
    assert notebook_problems(tmp_path / "broken.ipynb")[0].startswith("not valid JSON")



# ---------------------------------------------------------------------------------------
# The install cell: launch buttons (Colab, Binder) open a notebook without the package
# ---------------------------------------------------------------------------------------

def _install_cell_module():
    spec = importlib.util.spec_from_file_location("book_install_cell",
                                                  BOOK / "_ext" / "install_cell.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not NOTEBOOKS, reason="book/ has no notebooks yet")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_starts_with_the_install_cell_of_the_configured_repository(path):
    install_cell = _install_cell_module()
    source = install_cell.repository_source()
    assert source.startswith("git+http"), source
    assert install_cell.check_notebook(path, source) == []
    first = json.loads(path.read_text(encoding="utf-8"))["cells"][0]
    assert "remove-cell" in first["metadata"]["tags"]  # hidden in the HTML book
    assert f'"{source}"' in _text(first["source"])


def test_install_cell_follows_the_repository_setting(tmp_path):
    """Changing repository.url in a copy of _config.yml changes the cell; --check notices."""
    install_cell = _install_cell_module()
    config = tmp_path / "_config.yml"
    config.write_text("repository:\n  url: https://example.org/someone/fork/\n  branch: dev\n")
    source = install_cell.repository_source(config)
    assert source == "git+https://example.org/someone/fork@dev"
    notebook = tmp_path / "nb.ipynb"
    notebook.write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {},
                                    "cells": [{"cell_type": "markdown", "id": "a",
                                               "metadata": {}, "source": "# Title"}]}))
    assert install_cell.check_notebook(notebook, source)        # no install cell yet
    assert install_cell.update_notebook(notebook, source)
    assert install_cell.check_notebook(notebook, source) == []
    assert not install_cell.update_notebook(notebook, source)  # idempotent
    assert install_cell.check_notebook(notebook, "git+https://example.org/other@main")
    config.write_text("repository:\n  url: not a url\n")
    with pytest.raises(ValueError, match="repository.url"):
        install_cell.repository_source(config)


def _share_packages_except_distilkit(venv: Path, shared: Path) -> None:
    """Make this environment's installed packages (torch, ipykernel and the rest) importable in
    ``venv`` without distilkit: a folder of links to every entry of our site-packages except
    distilkit's own entries and the ``.pth`` files, named in a ``.pth`` file of ``venv``. pip in
    ``venv`` sees those packages as installed, so it installs distilkit alone."""
    ours = Path(sysconfig.get_paths()["purelib"])
    shared.mkdir()
    for entry in ours.iterdir():
        if entry.suffix == ".pth" or entry.name.lower().lstrip("_").startswith(("distilkit", "editable")):
            continue
        (shared / entry.name).symlink_to(entry)
    assert (shared / "torch").exists() and not list(shared.glob("distilkit*"))
    (next((venv / "lib").glob("python*/site-packages")) / "shared_test_packages.pth").write_text(f"{shared}\n")


def test_install_cell_makes_distilkit_importable_in_a_fresh_environment(tmp_path, monkeypatch):
    """As in Colab: a new virtual environment outside the repository, with torch and a kernel
    already there (linked from this environment rather than unpacked again: torch is what Colab
    preinstalls, not what is under test), but no distilkit.  The notebook's first cell, pointed
    at this working tree with DISTILKIT_INSTALL_SOURCE, installs the package into the new
    environment; `import distilkit` then works in the same kernel."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    _share_packages_except_distilkit(venv, tmp_path / "shared-site-packages")
    probe = subprocess.run([str(python), "-c", "import importlib.util as u, torch, ipykernel; "
                            "print(u.find_spec('distilkit'))"], capture_output=True, text=True, timeout=300,
                           cwd=tmp_path)
    assert probe.stdout.strip() == "None", probe.stdout + probe.stderr  # torch and a kernel, no distilkit
    kernels = tmp_path / "jupyter"
    subprocess.run([str(python), "-m", "ipykernel", "install", "--prefix", str(kernels),
                    "--name", "distilkit-fresh"], check=True, timeout=300,
                   stdout=subprocess.DEVNULL)
    monkeypatch.setenv("JUPYTER_PATH", str(kernels / "share" / "jupyter"))
    monkeypatch.setenv("DISTILKIT_INSTALL_SOURCE", str(BOOK.parent))
    monkeypatch.delenv("PYTHONPATH", raising=False)

    first = json.loads(NOTEBOOKS[0].read_text(encoding="utf-8"))["cells"][0]
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell('import importlib.util\n'
                                  'print("before:", importlib.util.find_spec("distilkit"))'),
        nbformat.v4.new_code_cell(_text(first["source"])),
        nbformat.v4.new_code_cell("import sys\nimport distilkit\n"
                                  "print('after:', distilkit.__file__)\nprint(sys.prefix)"),
    ]
    workdir = tmp_path / "elsewhere"       # not the repository: no local ./distilkit
    workdir.mkdir()
    client = nbclient.NotebookClient(nb, kernel_name="distilkit-fresh", timeout=1200,
                                     resources={"metadata": {"path": str(workdir)}})
    client.execute()
    # a cell's prints may arrive as one stream message or several: join each cell's stdout
    stdout = ["".join(o.get("text", "") for o in c.outputs
                      if o.get("output_type") == "stream" and o.get("name") == "stdout") for c in nb.cells]
    report = "\n".join(f"cell {i}: {[dict(o) for o in c.outputs]}" for i, c in enumerate(nb.cells))
    assert stdout[0].strip() == "before: None", report
    last = stdout[2].splitlines()
    after = [line for line in last if line.startswith("after:")]
    assert len(after) == 1 and last, report
    assert Path(last[-1]).resolve() == venv.resolve(), report
    installed = Path(after[0].split(":", 1)[1].strip()).resolve()
    assert venv.resolve() in installed.parents, f"distilkit imported from {installed}"


def test_progress_bars_only_for_a_person_at_a_notebook(monkeypatch):
    """dk.notebook.setup().progress: on for JupyterLab/Colab-like clients (they allow stdin),
    off for unattended executors (nbclient and nbval send allow_stdin=False); the variable
    DISTILKIT_PROGRESS decides when it is set."""
    import types

    import IPython

    from distilkit import notebook

    def shell(allow_stdin):
        return types.SimpleNamespace(kernel=types.SimpleNamespace(_allow_stdin=allow_stdin))

    monkeypatch.delenv("DISTILKIT_PROGRESS", raising=False)
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell(True))
    assert notebook.progress_wanted() is True
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell(False))
    assert notebook.progress_wanted() is False
    assert notebook.setup(seed=0).progress is False
    monkeypatch.setenv("DISTILKIT_PROGRESS", "1")
    assert notebook.progress_wanted() is True
    monkeypatch.setenv("DISTILKIT_PROGRESS", "0")
    monkeypatch.setattr(IPython, "get_ipython", lambda: None)  # plain Python
    assert notebook.progress_wanted() is False
    monkeypatch.delenv("DISTILKIT_PROGRESS")
    assert notebook.progress_wanted() is True
