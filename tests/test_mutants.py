"""The suite is judged by the bugs it catches: every mutant in tests/mutants.py, applied to a
copy of the repository, makes the tests it names fail."""

import os

import pytest
from mutants import MUTANTS, run_mutants

pytestmark = pytest.mark.slow  # a pytest run per mutant, in a copy of the repository


@pytest.fixture(scope="module")
def outcomes():
    """Every mutant's (caught, what happened), two at a time, each in a process of its own."""
    return dict(zip((m.name for m in MUTANTS), run_mutants(MUTANTS, workers=min(2, os.cpu_count() or 1))))


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_the_mutant_is_caught(mutant, outcomes):
    caught, tail = outcomes[mutant.name]
    assert caught, f"{mutant.name}: {tail}"
