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
