"""`pointlift quickstart`: the three methods, briefly, on embedded synthetic data, and a scene-segmentation demo.

No download and no data folder: shapes, RGB-D scenes and labelled rooms are generated
(pointlift.data.synthetic) and the 2D teacher is the bundled EfficientNet-Lite0. Each step runs briefly on
CPU and is compared with its untrained counterpart; the run directory gets one report.md that links each
step's own report and plots.

One module per demo (`image2point`, `ppkt`, `i2p_mae`, `segmentation`: `quickstart(run_dir, progress)`);
`pointlift.commands.quickstart.run_quickstart` runs them all.
"""
