"""`pointlift pretrain {ppkt,i2p-mae} --config FILE [--resume --run-dir DIR]`."""

from __future__ import annotations


def run(args) -> int:
    if args.method == "ppkt":
        from pointlift.methods.ppkt import pretrain_command
    else:
        from pointlift.methods.i2p_mae import pretrain_command
    pretrain_command(args.config, resume=args.resume, run_dir=args.run_dir)
    return 0
