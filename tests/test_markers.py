"""The ``e2e`` marker (tests/conftest.py) finds the tests that run a driver in a subprocess."""
import subprocess
import sys

from tests.conftest import runs_a_driver
from tests.helpers import run_cli


def _unit():
    return sum(range(3))


def _via_helper():
    return _calls_run_cli()


def _calls_run_cli():
    return run_cli("--help")


def _own_subprocess():
    return subprocess.run([sys.executable, "x.py"])


def _nested():
    def inner():
        return run_cli("-e", "0")
    return inner


def test_tests_that_run_a_driver_are_found_and_others_are_not():
    assert runs_a_driver(_calls_run_cli) and runs_a_driver(_via_helper)
    assert runs_a_driver(_own_subprocess) and runs_a_driver(_nested)
    assert not runs_a_driver(_unit)


def test_the_suite_marks_the_cli_tests(request):
    from tests.cleansing import test_cli_errors
    assert runs_a_driver(test_cli_errors.test_bad_options)
    assert request.node.get_closest_marker("e2e") is None
