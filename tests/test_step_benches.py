"""bench/step_times.py and bench/step_profile.py: their method configs are valid configs of the commands they
run, and every part the profile times exists in this tree (a rename would silently drop a row)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import step_profile  # noqa: E402
import step_times  # noqa: E402

from pointlift.engine.config import load_config  # noqa: E402
from pointlift.registry import trainer  # noqa: E402


@pytest.mark.parametrize("name", sorted(step_times.method_configs(3, Path("/unused"))))
def test_every_timed_config_loads_as_its_command_reads_it(name):
    words, config = step_times.method_configs(3, Path("/unused"))[name]
    method = trainer(*words)
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
    """bench/kernel_maps.py on two real sweeps: every row timed, both lookups compared (it asserts equality)."""
    import json

    import kernel_maps

    shared("data/semantickitti-mini/sequences/00/velodyne")
    out = tmp_path / "maps.json"
    monkeypatch.setattr(sys, "argv", ["kernel_maps.py", "--repeats", "1", "--voxel-size", "0.6", "--out", str(out)])
    kernel_maps.main()
    rows = json.loads(out.read_text())["rows"]
    assert [(row["stride"], row["kernel_size"]) for row in rows] == [(1, 5), (1, 3), (2, 3), (4, 3), (8, 3)]
    assert rows[0]["offsets_searched"] == 62 and all(row["one_search_per_column_ms"] > 0 for row in rows)
