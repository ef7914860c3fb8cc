"""How the README's test command (``-n 2 --dist loadfile``) shares its work between two workers.

As with xdist's own ``loadfile``, all the tests of one file run on one worker (a notebook's
cells share a kernel, a test module shares its fixtures), except the files in ``SPLIT``, whose
tests are independent processes of a minute or more each: those run one by one, on whichever
worker is free. And the slowest files start first (``SLOW``: approximate seconds on one core,
measured), so that the two workers finish at about the same time instead of one of them
starting a long notebook last. Without xdist, nothing here applies.
"""

from __future__ import annotations

import pytest

# files whose tests may run on different workers
SPLIT = {"tests/test_benchmarks_quick.py"}

QUICK = "tests/test_benchmarks_quick.py::test_quick_mode_runs_and_its_checks_pass"
# approximate seconds of the slowest work units; the rest start afterwards, in collection order
SLOW = {
    "book/04_training_students.ipynb": 100,
    "book/05_exposure_bias.ipynb": 100,
    "book/05_loss_memory.ipynb": 30,
    "book/05_tokenizers.ipynb": 20,
    "tests/test_readme.py": 85,
    f"{QUICK}[student_size.py]": 70,
    f"{QUICK}[quality.py]": 60,
    f"{QUICK}[lm_divergences.py]": 50,
    f"{QUICK}[d2t_causal.py]": 40,
    "tests/test_cli.py": 70,
    "tests/test_distributed.py": 70,
    "tests/test_book_html.py": 65,
    f"{QUICK}[temperature_alpha.py]": 40,
    "book/03_algorithm_and_math.ipynb": 45,
    "book/07_hf_model.ipynb": 40,
    "book/01_background.ipynb": 35,
    "tests/test_fsdp.py": 55,
    "tests/test_cli_flags.py": 45,
    "tests/test_parallel_cache.py": 30,
    "tests/test_crash_resume.py": 28,
    "tests/test_prompt_completion.py": 25,
    "book/08_lm_distillation.ipynb": 25,
    "book/10_decoder_only_d2t.ipynb": 10,
    "tests/test_notebooks_committed.py": 20,
}


def _unit(nodeid: str) -> str:
    """The work unit of a test: its file, or the test itself in a ``SPLIT`` file."""
    path = nodeid.split("::", 1)[0]
    return nodeid if path in SPLIT else path


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FilesSlowestFirst(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    config.option.loadscopereorder = False  # keep the workers' order (below), not xdist's by count
    return FilesSlowestFirst(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    if hasattr(config, "workerinput"):  # an xdist worker: its collection order is the work queue's
        items.sort(key=lambda item: -SLOW.get(_unit(item.nodeid), 0))  # stable: ties keep their order
