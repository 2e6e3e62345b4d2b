"""Error types. Every user-facing failure is one of these, so the CLI can print one line and exit 2."""

from __future__ import annotations

from pathlib import Path


class PointliftError(Exception):
    """Base class for errors that the CLI reports as a one-line message (exit code 2)."""


class PointliftDataError(PointliftError, ValueError):
    """Input data is missing, truncated, corrupt, non-finite or inconsistent.

    The message always names the file (or directory) and the problem.
    """

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class PointliftConfigError(PointliftError, ValueError):
    """A configuration file or argument is invalid (unknown key, wrong type, bad value)."""
