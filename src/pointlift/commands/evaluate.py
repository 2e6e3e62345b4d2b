"""`pointlift eval {ppkt,segmentation,svm,fewshot}`: score a checkpoint, print one line, optionally write JSON."""

from __future__ import annotations


def run(args) -> int:
    if args.task == "ppkt":
        return _ppkt(args)
    if args.task == "segmentation":
        return _segmentation(args)
    return _probe(args)


def _ppkt(args) -> int:
    """Point -> pixel retrieval of a PPKT checkpoint on an RGB-D directory."""
    import json

    from pointlift.engine.rundir import write_json
    from pointlift.methods.ppkt.retrieval import evaluate_frames
    from pointlift.engine.checkpoint import resolve_checkpoint

    record = evaluate_frames(resolve_checkpoint(args.checkpoint), args.frames)
    write_json(args.out, record, indent=1)
    print(json.dumps(record, indent=1))
    return 0


def _segmentation(args) -> int:
    from pointlift.engine.rundir import write_json
    from pointlift.tasks.segmentation.evaluate import evaluate_checkpoint

    record = evaluate_checkpoint(args.checkpoint, args.data, predictions_dir=args.predictions)
    write_json(args.out, record, indent=1)
    print(f"[segmentation] {len(record['scans'])} scans: mIoU {record['miou']:.4f}, overall accuracy "
          f"{record['overall_acc']:.4f} -> {args.out}")
    return 0


def _probe(args) -> int:
    """Linear SVM or N-way K-shot on frozen features of any method's checkpoint."""
    from pointlift.engine.rundir import write_json
    from pointlift.features.evaluate import describe, evaluate_fewshot, evaluate_svm

    common = dict(num_points=args.num_points, fmt=args.format, variant=args.variant,
                  compare_untrained=args.compare_untrained, batch_size=args.batch_size, device=args.device,
                  seed=args.seed)
    if args.task == "svm":
        record = evaluate_svm(args.checkpoint, args.data, folds=args.cv_folds, **common)
    else:
        record = evaluate_fewshot(args.checkpoint, args.data, way=args.way, shot=args.shot, folds=args.folds,
                                  test_per_class=args.test_per_class, **common)
    if args.out is not None:
        write_json(args.out, record, indent=2, default=str, allow_nan=False)  # strict JSON: NaN refused
    print(describe(record) + (f" -> {args.out}" if args.out is not None else ""))
    return 0
