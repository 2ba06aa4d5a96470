"""The example in ``persistkit.testing.strategies``'s docstring (which the README points to) runs as printed."""

from __future__ import annotations

import re
import textwrap

import persistkit.testing.strategies as strategies


def docstring_example() -> str:
    doc = strategies.__doc__ or ""
    match = re.search(r"::\n\n((?:    .*\n|\n)+)", doc)
    assert match, "the strategies docstring lost its example"
    return textwrap.dedent(match.group(1))


def test_strategies_docstring_example_passes_as_printed(pytester):
    pytester.makepyfile(test_strategies_example=docstring_example())
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=1)


def test_without_the_settings_line_hypothesis_refuses_the_fixture(pytester):
    code = docstring_example()
    bare = code.replace(
        "@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])\n",
        "@settings(deadline=None)\n",
    )
    assert bare != code
    pytester.makepyfile(test_strategies_example=bare)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*function_scoped_fixture*"])
