"""`pointlift inflate`: a 2D ConvNet inflated into a 3D sparse ConvNet (Image2Point), saved as a checkpoint."""

from __future__ import annotations


def run(args) -> int:
    from pointlift.methods.image2point import inflate_command

    inflate_command(
        teacher=args.teacher, weights=args.weights, mode=args.mode, axis=args.axis, out=args.out,
        design=args.design,
    )
    return 0
