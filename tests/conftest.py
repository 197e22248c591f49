"""Shared test fixtures.

``seed``: the seed of a random test. Each test gets a fresh one, printed (pytest shows it with
the output of a failing test); ``pytest --seed N tests/test_x.py::test_y`` replays that test.
"""

import random

import pytest


def pytest_addoption(parser):
    parser.addoption("--seed", type=int, default=None,
                     help="the seed every random test uses (default: a fresh one per test, printed)")


@pytest.fixture
def seed(request):
    value = request.config.getoption("--seed")
    if value is None:
        value = random.randrange(1 << 30)
    print(f"seed = {value} (replay with: pytest --seed {value} {request.node.nodeid})")
    return value
