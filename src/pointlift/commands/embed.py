"""`pointlift embed`: one global feature row per point set, written as .npy (+ row names in JSON)."""

from __future__ import annotations


def _data_overrides(args) -> dict:
    """The data flags given on the command line (absent ones keep the ShapeSetConfig defaults)."""
    return {key: value for key, value in (("format", args.format), ("variant", args.variant),
                                          ("normalize", getattr(args, "normalize", None))) if value is not None}


def run(args) -> int:
    from dataclasses import replace

    from pointlift.data.shape_sets import ShapeSetConfig
    from pointlift.engine.checkpoint import read_checkpoint_meta
    from pointlift.engine.checkpoint import resolve_checkpoint
    from pointlift.features.embed import checkpoint_num_points, embed_file

    meta = read_checkpoint_meta(resolve_checkpoint(args.checkpoint))
    data = ShapeSetConfig(num_points=args.num_points or checkpoint_num_points(meta), **_data_overrides(args))
    if args.columns is not None:
        data = replace(data, columns=args.columns)
    features = embed_file(args.checkpoint, args.points, args.out, batch_size=args.batch_size, device=args.device,
                          data=data, split=args.split)
    print(f"embed: {features.shape[0]} rows x {features.shape[1]} features -> {args.out}")
    return 0
