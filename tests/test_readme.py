"""CI must run what the README tells a user to run: the same set-up steps, and the same tests."""

import itertools
import re
import shlex
from pathlib import Path

from _pytest.mark.expression import Expression

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def _steps(command: str) -> list[str]:
    return [s.strip() for s in command.split("&&")]


def _readme_test_steps() -> tuple[list[str], list[str]]:
    """README's test command: (its set-up steps, its pytest arguments)."""
    steps = _steps(next(c for c in _readme_commands() if "pytest" in c))
    *setup, run = steps
    words = shlex.split(run)
    assert words[:3] == ["python", "-m", "pytest"], run
    return setup, words[3:]


def _ci_pytest_expressions(ci: str) -> list[str]:
    """The -m expression of each of CI's pytest runs (`timed_pytest EXPR` in .ci/run)."""
    return [shlex.split(line)[1] for line in ci.splitlines() if line.startswith("timed_pytest ")]


def _selected(expression: str, marks: set[str]) -> bool:
    return Expression.compile(expression).evaluate(lambda name, **_: name in marks)


def test_ci_runs_the_readme_set_up_steps_in_order():
    setup, _ = _readme_test_steps()
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    ci_setup = [line for line in ci_lines if line.startswith(setup[0])]
    assert len(ci_setup) == 1, ci_setup
    ci_steps = _steps(ci_setup[0].split(" || ")[0])
    assert ci_steps == setup


def test_ci_pytest_runs_select_the_readme_tests_each_once(pytestconfig):
    """README's `python -m pytest` selects by pyproject's addopts (`-m 'not cuda'`); CI's runs, each with
    its own -m, must together select exactly those tests, and none twice: checked for every combination of
    the markers the expressions name."""
    _, readme_args = _readme_test_steps()
    assert "-m" not in readme_args  # else the README's own expression replaces addopts'
    addopts = pytestconfig.getini("addopts")  # pyproject.toml's [tool.pytest.ini_options], split
    readme_expression = addopts[addopts.index("-m") + 1]
    ci = _ci_pytest_expressions((ROOT / ".ci" / "run").read_text())
    assert len(ci) >= 2 and ci[0] == "not slow and not cuda"  # the quick subset first, timed in the log
    registered = {m.split(":")[0] for m in pytestconfig.getini("markers")}
    # only the markers the expressions name can change what they select
    markers = sorted(set(re.findall(r"\w+", " ".join([readme_expression, *ci]))) - {"and", "or", "not"})
    assert set(markers) <= registered and {"slow", "cuda"} <= set(markers), markers
    for n in range(len(markers) + 1):
        for marks in map(set, itertools.combinations(markers, n)):
            runs = sum(_selected(e, marks) for e in ci)
            assert runs == int(_selected(readme_expression, marks)), (sorted(marks), ci)


def test_readme_setup_is_two_commands_and_pins_torch_first():
    setup = [c for c in _readme_commands() if c.startswith("python3 -m venv")]
    assert len(setup) == 2
    assert "momentumgs demo" in setup[0] and "pytest" in setup[1]
    for cmd in setup:
        steps = [s.strip() for s in cmd.split("&&")]
        torch_step = next(i for i, s in enumerate(steps) if s.startswith("pip install torch"))
        project_step = next(i for i, s in enumerate(steps) if s.startswith("pip install -e"))
        assert steps[torch_step] == "pip install torch==2.13.0"
        assert torch_step < project_step
