"""The README's runnable usage example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_get_leap_scheduler_example_runs():
    example = next(block for block in python_blocks() if "get_leap_scheduler(" in block)
    namespace: dict = {}
    exec(compile(example, str(README), "exec"), namespace)
    assert namespace["scheduler"].last_epoch == 100
    assert namespace["optimizer"]._leap_perturbation.perturbed_steps > 0


def test_readme_commands_exist():
    text = README.read_text()
    for command in ("bash scripts/main_job.sh", "bash scripts/test.sh"):
        assert command in text
        assert (README.parent / command.split()[1]).is_file()
    assert "bash scripts/test.sh" in (README.parent / ".ci" / "run").read_text()
