"""Progress bars on a terminal, silence in logs: one switch for every long loop.

A bar shows when its caller wants one, stderr is a terminal, and the command line did not say
`--no-progress`; redirected output (a log file, CI) gets no carriage-return frames.
"""

from __future__ import annotations

import sys
from typing import Iterable, Optional

_switch: Optional[bool] = None  # False: --no-progress; None: decided by the terminal


def set_enabled(enabled: Optional[bool]) -> None:
    """The command line's choice: False turns every bar off; None leaves it to the terminal."""
    global _switch
    _switch = enabled


def enabled() -> bool:
    return sys.stderr.isatty() if _switch is None else _switch


def bar(iterable: Optional[Iterable] = None, *, wanted: bool = True, **tqdm_options):
    """A tqdm bar (disabled, so a no-op, unless `wanted` and `enabled()`), with tqdm's own options."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not (wanted and enabled()), dynamic_ncols=True, **tqdm_options)
