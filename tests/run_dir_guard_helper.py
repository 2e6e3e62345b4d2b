"""Used by tests/test_run_dir_guard.py under torchrun (2 processes): two refused runs through the CLI,
each process recording its exit code and error line in OUT/rank<R>.json.

1. `pretrain ppkt --run-dir HELD` into a directory that holds a finished run (refused by rank 0 alone:
   the refusal must reach rank 1 too, or it would wait for the directory's name);
2. `pretrain ppkt --run-dir FRESH` with a batch of 3 for 2 processes (refused by the trainer after the
   directory was made: rank 0 must remove it).

    python -m torch.distributed.run --nproc_per_node 2 run_dir_guard_helper.py OUT CONFIG HELD ODD_CONFIG FRESH
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path

from pointlift.cli import main
from pointlift.engine import distributed


def run(out: Path, config: str, held: str, odd_config: str, fresh: str) -> None:
    record = []
    for args in (["--config", config, "--run-dir", held], ["--config", odd_config, "--run-dir", fresh]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(["pretrain", "ppkt", *args])
        record.append({"code": code, "stderr": err.getvalue()})
    (out / f"rank{os.environ.get('RANK', 0)}.json").write_text(json.dumps(record))
    distributed.cleanup()


if __name__ == "__main__":
    run(Path(sys.argv[1]), *sys.argv[2:6])
