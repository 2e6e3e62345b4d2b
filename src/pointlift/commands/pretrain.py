"""`pointlift pretrain {ppkt,i2p-mae} --config FILE [--resume|--overwrite] [--run-dir DIR]`."""

from __future__ import annotations


def run(args) -> int:
    from pointlift.commands.common import train_method
    from pointlift.registry import trainer

    train_method(trainer("pretrain", args.method), args.config, args.resume, args.run_dir,
                 overwrite=args.overwrite)
    return 0
