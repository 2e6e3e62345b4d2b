"""Used by tests/test_ddp.py: under torchrun, run the training commands through the CLI on the
tiny configs of tests/run_configs.py, without --run-dir (so the processes must agree on one run
directory). Every process other than rank 0 records, with a Python audit hook, each file it opens for
writing (or renames, or creates) inside a run directory, in OUT/<method>/writes-rank<R>.json.

    python -m torch.distributed.run --nproc_per_node 2 ddp_methods_helper.py OUT MODELNET10_NPZ METHOD...
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import run_configs  # noqa: E402

from pointlift.cli import main  # noqa: E402
from pointlift.engine import distributed  # noqa: E402

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
WATCHED: list[Path] = []
WRITES: list[str] = []


def audit(event: str, args: tuple) -> None:
    if not WATCHED:
        return
    paths = []
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        mode, flags = args[1], args[2] if len(args) > 2 else 0
        if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (isinstance(flags, int) and flags & WRITE_FLAGS):
            paths.append(args[0])
    elif event in ("os.rename", "os.mkdir", "os.remove", "shutil.rmtree"):
        paths.extend(a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike)))
    for path in paths:
        path = Path(os.fsdecode(path)).absolute()
        if any(path == root or root in path.parents for root in WATCHED):
            WRITES.append(f"{event} {path}")


def run(out: Path, modelnet10: Path, methods: list[str]) -> None:
    rank = int(os.environ.get("RANK", 0))
    if rank > 0:
        sys.addaudithook(audit)
    for method in methods:
        root = (out / method).absolute()
        root.mkdir(parents=True, exist_ok=True)
        args, config = run_configs.ddp_config(method, root, modelnet10)
        path = run_configs.write(config, root / f"config-rank{rank}.yaml")
        os.chdir(root)  # image2point's run directories go under ./runs
        WATCHED[:] = [root / "runs"]
        WRITES.clear()
        code = main([*args, "--config", str(path)])
        WATCHED.clear()
        (root / f"result-rank{rank}.json").write_text(json.dumps({"code": code, "writes": WRITES}))
    distributed.cleanup()


if __name__ == "__main__":
    run(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
