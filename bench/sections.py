"""BENCHMARKS.md is a set of sections, one per benchmark; each run replaces its own."""

from __future__ import annotations

import re
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def replace_section(title: str, section: str, path: Path = BENCHMARKS) -> None:
    """Put ``section`` (starting with "## title") in place of the old one, or append it."""
    text = path.read_text() if path.exists() else "# rayfp benchmarks\n"
    pattern = re.compile(rf"## {re.escape(title)}\n.*?(?=\n## |\Z)", re.S)
    text = (pattern.sub(lambda _: section, text) if pattern.search(text)
            else text.rstrip() + "\n\n" + section)
    path.write_text(text)
