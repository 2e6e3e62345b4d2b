"""`pointlift eval {ppkt,segmentation,svm,fewshot}`: score a checkpoint, print one line, optionally write JSON."""

from __future__ import annotations


def run(args) -> int:
    if args.task == "ppkt":
        return _ppkt(args)
    if args.task == "segmentation":
        return _segmentation(args)
    return _probe(args)


def _ppkt(args) -> int:
    from pointlift.methods.ppkt import eval_command
    from pointlift.tasks.embed import resolve_checkpoint

    eval_command(resolve_checkpoint(args.checkpoint), args.frames, args.out)
    return 0


def _segmentation(args) -> int:
    from pointlift.tasks.segmentation import eval_command

    eval_command(args.checkpoint, args.data, args.out, predictions_dir=args.predictions)
    return 0


def _probe(args) -> int:
    """Linear SVM or N-way K-shot on frozen features of any method's checkpoint."""
    from pointlift.tasks.evaluate import describe, evaluate_fewshot, evaluate_svm, write_json

    common = dict(num_points=args.num_points, fmt=args.format, variant=args.variant,
                  compare_untrained=args.compare_untrained, batch_size=args.batch_size, device=args.device,
                  seed=args.seed)
    if args.task == "svm":
        record = evaluate_svm(args.checkpoint, args.data, folds=args.cv_folds, **common)
    else:
        record = evaluate_fewshot(args.checkpoint, args.data, way=args.way, shot=args.shot, folds=args.folds,
                                  test_per_class=args.test_per_class, **common)
    if args.out is not None:
        write_json(args.out, record)
    print(describe(record) + (f" -> {args.out}" if args.out is not None else ""))
    return 0
