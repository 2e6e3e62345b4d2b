"""`pointlift finetune {image2point,i2p-mae,segmentation} --config FILE [--resume|--overwrite] [--run-dir DIR] [KEY=VALUE ...]`."""

from __future__ import annotations


def run(args) -> int:
    from pointlift.commands.common import train_method
    from pointlift.registry import trainer

    train_method(trainer("finetune", args.method), args.config, args.resume, args.run_dir,
                 args.overrides, overwrite=args.overwrite)
    return 0
