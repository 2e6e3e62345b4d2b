"""`pointlift finetune {image2point,i2p-mae,segmentation} --config FILE [--resume --run-dir DIR]`."""

from __future__ import annotations


def run(args) -> int:
    if args.method == "image2point":
        from pointlift.methods.image2point import finetune_command
    elif args.method == "segmentation":
        from pointlift.tasks.segmentation import finetune_command
    else:
        from pointlift.methods.i2p_mae import finetune_command
    finetune_command(args.config, resume=args.resume, run_dir=args.run_dir)
    return 0
