"""bench/step_times.py and bench/step_profile.py: their method configs are valid configs of the commands they
run, every part the profile times exists in this tree (a rename would silently drop a row), and step_times
pairs its arms as its docstring says."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import step_profile  # noqa: E402
import step_times  # noqa: E402

from pointlift.engine.config import load_config  # noqa: E402
from pointlift.registry import trainer  # noqa: E402


@pytest.mark.parametrize("name", sorted(step_times.method_configs(3, Path("/unused"))))
def test_every_timed_config_loads_as_its_command_reads_it(name, tmp_path):
    words, config = step_times.method_configs(3, Path("/unused"))[name]
    from pointlift.cli import build_parser

    (tmp_path / "config.yaml").write_text("{}")
    build_parser().parse_args([*words, "--config", str(tmp_path / "config.yaml")])  # a command line pointlift takes
    command = words[: words.index("--sparse-backend")] if "--sparse-backend" in words else words
    method = trainer(*command)
    loaded = load_config(config, method.config)
    assert loaded.train.max_steps == 3 and loaded.train.log_every == 1


def test_every_profiled_part_exists_in_this_tree():
    missing = []
    for parts in (step_profile.COMMON, *step_profile.PARTS.values()):
        for label, path in parts.items():
            if "(before)" in label:
                continue  # the code before issue 27, kept to profile an older tree
            replaced = step_profile._patch(path, {}, label)
            if not replaced:
                missing.append(path)
            for owner, attribute, original in replaced:
                setattr(owner, attribute, original)
    assert not missing, missing
    assert set(step_profile.METHOD_PARTS) <= set(step_times.method_configs(3, Path("/unused")))


def test_kernel_map_bench_runs_and_checks_both_lookups(shared, tmp_path, monkeypatch):
    """bench/kernel_maps.py on two real sweeps: every row timed, both lookups compared, and the network's maps on
    each backend (it asserts equality)."""
    import json

    import kernel_maps

    shared("data/semantickitti-mini/sequences/00/velodyne")
    out = tmp_path / "maps.json"
    monkeypatch.setattr(sys, "argv", ["kernel_maps.py", "--repeats", "1", "--voxel-size", "0.6", "--out", str(out)])
    kernel_maps.main()
    record = json.loads(out.read_text())
    rows = record["rows"]
    assert [(row["stride"], row["kernel_size"]) for row in rows] == [(1, 5), (1, 3), (2, 3), (4, 3), (8, 3)]
    assert record["network"]["maps"] == 14 and record["network"]["pure_ms"] > 0
    assert rows[0]["offsets_searched"] == 62 and all(row["one_search_per_column_ms"] > 0 for row in rows)


def test_step_times_pairs_each_arm_with_the_first_tree_at_its_thread_count_over_all_timed_steps(tmp_path):
    def run(*rates):
        return {"samples_per_s": sorted(rates)[len(rates) // 2], "per_step": list(rates)}

    # per repeat: the new tree halves the time of the slow step only (batches differ in size, as scene crops do)
    results = {"seg": {"old-t1": [run(2.0, 10.0, 10.0), run(4.0, 10.0, 10.0)],
                       "new-t1": [run(4.0, 10.0, 10.0), run(8.0, 10.0, 10.0)],
                       "old-t2": [run(3.0, 10.0), run(3.0, 10.0)],
                       "new-t2": [run(6.0, 20.0), run(3.0, 10.0)]}}
    arms = {"old-t1": ("old", 1, 1), "old-t2": ("old", 2, 1), "new-t1": ("new", 1, 1), "new-t2": ("new", 2, 1)}
    row = step_times.summarise(results, arms)["seg"]
    assert row["ratio_new-t1_vs_old-t1"] == 1.0  # the medians of per-step rates see no change
    first = row["paired_new-t1_vs_old-t1"]
    # time over the steps: (1/2 + 2/10) / (1/4 + 2/10) and (1/4 + 2/10) / (1/8 + 2/10)
    expected = [0.7 / 0.45, 0.45 / 0.325]
    assert first["per_repeat"] == pytest.approx(expected)
    assert first["ratio"] == pytest.approx(math.sqrt(expected[0] * expected[1]))
    assert first["low"] < first["ratio"] < first["high"]
    second = row["paired_new-t2_vs_old-t2"]  # against the old tree at two threads, not at one
    assert second["per_repeat"] == pytest.approx([2.0, 1.0])
    assert "paired_old-t2_vs_old-t1" not in row  # a thread count of the same tree is no before -> after pair
    assert step_times.plot_paired({"seg": row}, tmp_path / "paired.png").stat().st_size > 0
    assert step_times.plot_paired({"seg": {"old-t1": 1.0}}, tmp_path / "none.png") is None  # one tree: no pairs
    # --versus: a worker arm of another method against the first tree's arms of "seg" (the same repeats)
    results["seg-worker"] = {arm: [run(8.0, 20.0), run(6.0, 10.0)] for arm in arms}
    worker = step_times.summarise(results, arms, {"seg-worker": "seg"})["seg-worker"]
    assert worker["paired_new-t1_vs_seg:old-t2"]["per_repeat"] == pytest.approx(
        [(1 / 3 + 1 / 10) / (1 / 8 + 1 / 20), (1 / 3 + 1 / 10) / (1 / 6 + 1 / 10)])
    assert "paired_new-t1_vs_seg:new-t2" not in worker  # only the first tree is a baseline
