"""Typed benchmark presets: `pointlift.bench.Preset.table` refuses bad tables when the module loads."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from pointlift.bench import PRESETS, Preset
from pointlift.errors import PointliftConfigError


@dataclass(frozen=True)
class DemoPreset(Preset):
    repeats: int
    device: str = "cpu"


def test_table_builds_frozen_instances_with_defaults():
    table = DemoPreset.table({"smoke": {"repeats": 1}, "gpu": {"repeats": 10, "device": "cuda"}})
    assert table == {"smoke": DemoPreset(1), "gpu": DemoPreset(10, "cuda")}
    with pytest.raises(dataclasses.FrozenInstanceError):
        table["smoke"].repeats = 2
    assert dataclasses.replace(table["smoke"], repeats=3).repeats == 3


@pytest.mark.parametrize("presets, message", [
    ({"smoke": {"repeats": 1, "repeat": 2}}, "DemoPreset preset 'smoke': unknown keys repeat (known: repeats, device)"),
    ({"smoke": {"device": "cpu"}}, "DemoPreset preset 'smoke': missing keys repeats (known: repeats, device)"),
    ({"huge": {"repeats": 1}}, "DemoPreset: unknown preset 'huge'; presets are " + ", ".join(PRESETS)),
])
def test_table_refuses_unknown_keys_missing_keys_and_unknown_presets(presets, message):
    with pytest.raises(PointliftConfigError) as caught:
        DemoPreset.table(presets)
    assert str(caught.value) == message


def test_sparse_benchmark_presets_are_typed():
    from pointlift.bench import sparse

    assert set(sparse.PRESETS) == {"smoke", "cpu", "gpu"}
    assert all(isinstance(p, sparse.SparsePreset) for p in sparse.PRESETS.values())
    assert sparse.PRESETS["cpu"].scaling == (0.044, 0.02, 0.0082)


def test_every_benchmark_table_is_typed():
    """Each registered benchmark's PRESETS maps its preset names to instances of one Preset subclass."""
    from pointlift.registry import BENCHMARKS

    for name, module in BENCHMARKS.items():
        table = module.PRESETS
        assert table and set(table) <= set(PRESETS), name
        kinds = {type(preset) for preset in table.values()}
        assert len(kinds) == 1 and issubclass(kinds.pop(), Preset), name


def test_image2point_record_leaves_unset_optional_settings_out():
    from pointlift.bench import image2point

    assert "workers" not in image2point.PRESETS["smoke"].record()
    full = image2point.PRESETS["cpu-full"].record()
    assert full["workers"] == 2 and full["fewshot_seeds"] == [0, 1, 2] and "fewshot_lrs" not in full
