"""The README's "Verify your own component" example, extracted from README.md and run as printed."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    section = text[text.index("## Verify your own component") :]
    match = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert match, "the README lost its example"
    return match.group(1)


def test_readme_example_passes_as_printed(pytester):
    pytester.makepyfile(test_wallet=readme_example())
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=1)


def test_readme_example_fails_without_the_fsync(pytester):
    code = readme_example()
    broken = code.replace("json.dump(data, f); f.flush(); os.fsync(f.fileno())", "json.dump(data, f)")
    assert broken != code
    pytester.makepyfile(test_wallet=broken)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*crash_points*"])
