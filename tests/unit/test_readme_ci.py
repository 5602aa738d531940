"""The README's second code block (set up and run the tests) is exactly what .ci/run runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def code_blocks(markdown: str) -> list[list[str]]:
    return [block.strip().splitlines() for block in re.findall(r"```sh\n(.*?)```", markdown, re.S)]


def test_ci_runs_the_readme_test_block_verbatim() -> None:
    blocks = code_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(blocks) >= 2
    test_block = blocks[1]
    ci_lines = [
        line
        for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    # .ci/run may add shell setup (set -e, cd, exports) but must run the block's lines in order.
    commands = [line for line in ci_lines if not line.startswith(("set ", "cd ", "export "))]
    assert commands == test_block
