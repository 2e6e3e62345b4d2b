"""The README's "Command line" examples hold: every line parses with today's parser (placeholders filled
in), and a representative set runs as written from a fresh shell (empty HOME, `source scripts/activate`)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from shape_layouts import write_point_folder
from test_env_script import _clean_env

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Command line", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip().startswith("pointlift")]


def _fill(line: str, tmp: Path) -> list[str]:
    """One README line as argv: optional [..] parts dropped, {a,b} / {a|b} choices take the first,
    placeholders become real paths under `tmp`."""
    while re.search(r"\[[^\[\]]*\]", line):
        line = re.sub(r"\s*\[[^\[\]]*\]", "", line)
    line = re.sub(r"\{([^{},|]+)[,|][^{}]*\}", r"\1", line)
    places = {"DIR": tmp / "dir", "W.safetensors": tmp / "w.safetensors", "runs/…/checkpoints/last": tmp / "ckpt",
              "RUN_OR_CKPT": tmp / "ckpt", "CKPT": tmp / "ckpt", "SHAPES": tmp / "dir", "shapes.npz": tmp / "w.safetensors"}
    words = []
    for word in line.split()[1:]:
        for placeholder, path in places.items():
            if word == placeholder or word.endswith("=" + placeholder):
                word = word[: len(word) - len(placeholder)] + str(path)
        words.append(word)
    return words


def test_every_readme_command_line_parses(tmp_path, monkeypatch):
    from pointlift.cli import build_parser, parse

    (tmp_path / "dir").mkdir()
    (tmp_path / "w.safetensors").write_bytes(b"")
    monkeypatch.chdir(ROOT)  # configs/... as written
    lines = _readme_commands()
    assert len(lines) >= 15
    seen = set()
    for line in lines:
        words = _fill(line, tmp_path)
        try:
            args = parse(build_parser(), words)
        except SystemExit as exit_:
            pytest.fail(f"README line does not parse ({exit_.code}): {line}")
        seen.add(args.command)
    assert seen >= {"quickstart", "inflate", "pretrain", "finetune", "eval", "embed", "bench", "config"}


def test_readme_examples_run_from_a_fresh_shell(tmp_path):
    """A representative set, as the README writes them (only placeholders and sizes filled in)."""
    (tmp_path / "home").mkdir()
    shapes = write_point_folder(tmp_path / "shapes", per_class=4, test_per_class=2, points=200)
    run = tmp_path / "run"
    commands = [
        "pointlift config show i2p-mae-pretrain",
        f"pointlift pretrain i2p-mae --config configs/i2p_mae_modelnet10.yaml train.max_steps=2 data.path={shapes} data.format=auto "
        f"train.epochs=null train.batch_size=4 data.num_points=256 --run-dir {run}",
        f"pointlift eval svm --checkpoint {run} --data {shapes} --out {tmp_path / 'svm.json'} --cv-folds 2",
        f"pointlift embed --checkpoint {run} --points {shapes} --out {tmp_path / 'features.npy'}",
    ]
    script = f"set -e; cd {ROOT}; source scripts/activate; " + "; ".join(commands)
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=_clean_env(tmp_path),
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "train.max_steps" in out.stdout and "i2p-mae: 2 steps" in out.stdout
    assert (run / "report.md").is_file() and (tmp_path / "svm.json").is_file()
    assert (tmp_path / "features.npy.json").is_file() and (tmp_path / "features.labels.npy").is_file()
    assert "Traceback" not in out.stderr
