"""`pointlift quickstart`: every method briefly on embedded synthetic data."""

from __future__ import annotations


def run(args) -> int:
    from pointlift.quickstart.run import run_quickstart

    run_quickstart(out_dir=args.out, progress=not args.no_progress)
    return 0
