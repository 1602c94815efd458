import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stack import RESULTS, Stack  # noqa: E402


@pytest.fixture(scope="module")
def stack():
    """One stack (nginx, Redis, two workers) shared by a test module."""
    s = Stack(workers=2).start()
    yield s
    s.stop()


@pytest.fixture
def fresh_stack(request):
    """A private stack for tests that break things; parameters via
    @pytest.mark.stack(workers=..., worker_args=[...], ...)."""
    marker = request.node.get_closest_marker("stack")
    kwargs = dict(marker.kwargs) if marker else {}
    s = Stack(**kwargs).start()
    yield s
    s.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """item.rep_setup / rep_call / rep_teardown: fixtures can tell whether
    the test passed (and keep what a failure needs for its diagnosis)."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def pytest_configure(config):
    config.addinivalue_line("markers", "stack(**kwargs): options of the fresh_stack fixture")


def pytest_terminal_summary(terminalreporter):
    if RESULTS:
        terminalreporter.section("messages published / received / lost / duplicated")
        for line in RESULTS:
            terminalreporter.write_line(line)
