"""Every Python example in README.md and docs/*.md runs as written, on every device it names, and
prints what the docs show (docs that stop working are a bug).

- An example runs as written (``Chip.open("model")`` where it says so).
- An example whose ``Chip.open("model"...)`` line names "sim" in its comment ("or "sim"") runs on
  the Verilator sim device too, with ``"model"`` replaced by ``"sim"``. Examples that ask for a
  shape of their own (``shape=``) build another sim device, so their "sim" run is a slow test.
- An example that runs a parameter sweep (``sweep(``: many training runs, minutes) is a slow test.
- Examples run in a temporary folder (files they write stay out of the work tree).
- A ```` ```text ```` block that follows an example (with at most a line of prose between them)
  is its output: the example must print exactly that, on every device it runs on.
"""

import contextlib
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLE = re.compile(r"```python\n(.*?)```\n(?:(?:[^`\n][^\n]*\n|\n){0,3}?```text\n(.*?)```)?", re.S)
OPEN_MODEL = re.compile(r'Chip\.open\("model"[^\n]*#[^\n]*"sim"')


def examples():
    found = []
    for path in DOCUMENTS:
        for number, match in enumerate(EXAMPLE.finditer(path.read_text())):
            code, output = match.group(1), match.group(2)
            name = f"{path.relative_to(ROOT)} example {number}"
            found.append(pytest.param(code, output, "model", id=f"{name} (as written)",
                                      marks=[pytest.mark.slow] if "sweep(" in code else []))
            if OPEN_MODEL.search(code):
                marks = [pytest.mark.verilator] + ([pytest.mark.slow] if "shape=" in code else [])
                found.append(pytest.param(code.replace('Chip.open("model"', 'Chip.open("sim"'), output, "sim",
                                          id=f"{name} (sim)", marks=marks))
    return found


EXAMPLES = examples()


def test_the_docs_have_examples_with_outputs():
    readme = [p for p in EXAMPLES if p.id.startswith("README.md")]
    assert len(readme) >= 3                                 # the tour on model and sim, the model on its own
    assert sum(p.values[1] is not None for p in EXAMPLES) >= 4
    assert any(p.values[2] == "sim" for p in EXAMPLES)


@pytest.mark.parametrize("code, output, device", EXAMPLES)
def test_example_runs_and_prints_what_the_docs_show(code, output, device, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, f"example on {device}", "exec"), {"__name__": "__example__"})
    if output is not None:
        assert printed.getvalue() == output
