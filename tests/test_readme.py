"""CI must run what the README tells a user to run: the same set-up steps, and the same tests."""

import re
import shlex
from pathlib import Path

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


def test_ci_runs_the_readme_set_up_steps_before_the_quick_subset():
    setup, _ = _readme_test_steps()
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    ci_setup = [line for line in ci_lines if line.startswith(setup[0]) and "pytest" not in line]
    assert len(ci_setup) == 1, ci_setup
    assert _steps(ci_setup[0].split(" || ")[0]) == setup


def test_ci_runs_the_readme_test_command_verbatim():
    test_command = next(c for c in _readme_commands() if "pytest" in c)
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines


def test_ci_times_the_quick_subset_before_the_full_run():
    """The quick subset (`-m "not slow"`, with `not cuda` again because a second -m replaces addopts') runs
    first, so that its time shows in CI's log; then the README's command runs every test."""
    test_command = next(c for c in _readme_commands() if "pytest" in c)
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    quick = [i for i, line in enumerate(ci_lines) if line.startswith("python -m pytest -q -m")]
    assert len(quick) == 1 and '-m "not slow and not cuda"' in ci_lines[quick[0]]
    assert quick[0] < ci_lines.index(test_command)


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
