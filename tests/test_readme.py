"""The README's code runs as shown: the API snippet, executed as a user would paste it."""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_block(section: str) -> str:
    """The first ```python block under the README heading ``section``."""
    text = README.read_text()
    body = text[text.index(f"\n## {section}\n") :]
    match = re.search(r"```python\n(.*?)```", body, re.DOTALL)
    assert match, f"no python block under {section!r}"
    return match.group(1)


def test_api_snippet_runs_as_shown(capsys):
    code = _python_block("API in five lines")
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - the project's own README
    x, weight, bias = namespace["x"], namespace["weight"], namespace["bias"]
    torch.testing.assert_close(namespace["y"], F.conv2d(x, weight, bias, stride=2, padding=3))
    out = capsys.readouterr().out
    assert "plan or reason" in out and "2 calls" in out
    # The snippet's input is mostly zeros: both sparsified convolutions skip.
    assert all(r.chosen != "dense" for r in namespace["prof"].records), out
