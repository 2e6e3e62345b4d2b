"""`pointlift config show KIND [--yaml]` and `pointlift config docs`: the reference of every config key.

KIND is a training command's config (the registry's `config_kinds`). `show` prints each dotted key with its
type, default and meaning, or with `--yaml` a full default config to start a file from; `docs` prints
docs/CONFIG.md, the same reference for every kind (tests/test_config_overrides.py holds the file equal).
"""

from __future__ import annotations

import yaml

HEADER = """# Config reference

Every key of every training command's config, generated from the typed configs by
`pointlift config docs > docs/CONFIG.md` (a test fails when this file is stale). `pointlift config show KIND`
prints one kind's keys; `--yaml` a full default config.

- A config file sets any subset of these keys; the rest keep their defaults. An unknown key, a wrong type
  or a value out of range fails when the file is loaded, naming the file and the dotted key.
- `KEY=VALUE` items after the command override keys of the file (`pointlift pretrain i2p-mae --config C
  train.max_steps=4 data.path=DIR`); values are YAML (`4`, `null`, `[1, 2]`) and are checked like the file.
  The run's `config.yaml` holds the values used.
- `input path` keys written in a file are relative to the file's folder (a missing one is reported with the
  folder it was resolved against); those given on the command line, the defaults below, and every `path`
  key (outputs: `run_root`, cache folders) are relative to the current directory.
- A run's length is `train.epochs`, or `train.max_steps` optimiser steps when set (`epochs: null` then).
"""


def kinds() -> dict:
    from pointlift.registry import config_kinds

    return config_kinds()


def docs_markdown() -> str:
    """docs/CONFIG.md: the reference of every kind."""
    from pointlift.engine.config_reference import as_markdown, reference

    parts = [HEADER]
    for kind, method in kinds().items():
        parts.append(f"\n## `{kind}`: `pointlift {method.verb} {method.name}` ({method.config.__name__})\n\n")
        parts.append(as_markdown(reference(method.config)))
    return "".join(parts)


def run(args) -> int:
    from pointlift.engine.config_reference import as_text, default_dict, reference

    if args.action == "docs":
        print(docs_markdown(), end="")
        return 0
    method = kinds()[args.kind]
    if args.yaml:
        print(f"# the default config of `pointlift {method.verb} {method.name}` (pointlift config show {args.kind})")
        print(yaml.safe_dump(default_dict(method.config), sort_keys=False), end="")
    else:
        print(as_text(reference(method.config)), end="")
    return 0
