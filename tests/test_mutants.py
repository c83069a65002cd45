"""The suite is judged by the bugs it catches: every mutant in tests/mutants.py, applied to a
copy of the repository, makes the tests it names fail."""

import pytest

from mutants import MUTANTS, run_mutant

pytestmark = pytest.mark.slow  # a pytest run per mutant, in a copy of the repository


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_the_mutant_is_caught(mutant):
    caught, tail = run_mutant(mutant)
    assert caught, f"{mutant.name}: {tail}"
