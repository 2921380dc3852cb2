"""Switch params.yaml between shipped profiles (builtin, book, book-small) without losing its comments."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import yaml as pyyaml
from ruamel.yaml import YAML

from model.atomic import write_text
from steps.config import PARAMS_FILE, ConfigError, Params, flat_params, load_params, parse_params

PROFILES_DIR = Path("profiles")


def available(profiles_dir: Path = PROFILES_DIR) -> list[str]:
    return sorted(p.stem for p in profiles_dir.glob("*.yaml"))


def _yaml() -> YAML:
    yaml = YAML()  # round-trip mode: comments, key order and quoting survive an edit
    yaml.preserve_quotes = True
    yaml.width = 4096
    return yaml


def overlay(params: Any, profile: Any, source: str) -> None:
    """Each `section.key` of the profile replaces that key of params (whole, so a source's
    `kind`-specific fields never mix with another kind's); a top-level scalar replaces its key."""
    for section, value in profile.items():
        if isinstance(value, dict):
            if section not in params or not isinstance(params[section], dict):
                raise ConfigError(f"{source}: section {section!r} is not in params.yaml")
            for key, item in value.items():
                params[section][key] = item
        else:
            params[section] = value


def apply_profile(name: str, params_path: str | Path = PARAMS_FILE, profiles_dir: Path = PROFILES_DIR) -> dict[str, tuple[Any, Any]]:
    """Write the profile into params.yaml (validated first; the file changes only if it is valid).

    Returns the changed parameters as `{"section.key": (old, new)}`.
    """
    profile_path = profiles_dir / f"{name}.yaml"
    if not profile_path.is_file():
        raise ConfigError(f"no profile {name!r} in {profiles_dir}/ (available: {', '.join(available(profiles_dir))})")
    params_path = Path(params_path)
    before = flat_params(load_params(params_path), _sections())
    yaml = _yaml()
    params = yaml.load(params_path.read_text(encoding="utf-8"))
    overlay(params, yaml.load(profile_path.read_text(encoding="utf-8")), str(profile_path))
    out = io.StringIO()
    yaml.dump(params, out)
    # Validate exactly what load_params will read (PyYAML), before anything is written.
    text = out.getvalue()
    after = flat_params(parse_params(pyyaml.safe_load(text), f"{params_path} with profile {name}"), _sections())
    write_text(params_path, text)
    return {k: (before.get(k), v) for k, v in after.items() if before.get(k) != v}


def _sections() -> list[str]:
    return list(Params.model_fields)
