"""Features of any pointlift checkpoint: `embed` (one row per point set, `pointlift embed`) and `evaluate`
(linear SVM and few-shot probes, `pointlift eval svm|fewshot`). They rebuild a checkpoint's network through
`pointlift.registry`, so they sit above every method."""
