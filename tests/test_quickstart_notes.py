"""The quickstart's notes quote no figure that BENCHMARKS.md does not hold (a superseded result would
otherwise live on in every user's first report)."""

from __future__ import annotations

import re
from pathlib import Path

from pointlift.commands.quickstart import NOTES

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def test_every_figure_in_the_notes_is_in_benchmarks_md():
    text = BENCHMARKS.read_text()
    for method, note in NOTES.items():
        for figure in re.findall(r"\d+\.\d+", note):
            assert figure in text, f"{method} note quotes {figure}, which BENCHMARKS.md does not hold"
