"""CI must run exactly what the README tells a user to run."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_the_readme_test_command():
    commands = _readme_commands()
    test_cmd = next(c for c in commands if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci.splitlines()


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
