"""`pointlift inflate --teacher NAME [--weights FILE] --out CKPT`: Image2Point's inflation, saved."""

from __future__ import annotations


def run(args) -> int:
    from pointlift.methods.image2point.inflate import inflate_to_checkpoint
    from pointlift.models.inflate import format_report

    path, report = inflate_to_checkpoint(teacher=args.teacher, weights=args.weights, mode=args.mode,
                                         axis=args.axis, out=args.out, design=args.design)
    print(format_report(report))
    print(f"[image2point] inflated {len(report)} layers of {args.teacher} ({args.mode}, axis {args.axis}) -> {path}")
    return 0
