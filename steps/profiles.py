"""Switch params.yaml between shipped profiles (builtin, book, book-small) without losing its comments.

A profile is applied as text edits of params.yaml, one per `section.key` it sets, so that switching
to another profile and back gives params.yaml back byte for byte (any stray byte changes its hash,
and DVC reruns every stage that reads it):
- a one-line value replaced by a one-line value changes in place; params.yaml's comment stays;
- anything else (a block such as a dataset's source) is replaced whole, with the profile's own
  lines and comments, which leave with it when another profile replaces the block;
- a value equal to the one params.yaml holds is left as written.
ruamel.yaml's round-trip loader only locates the keys (line and column); it does not rewrite the
file, since its comment handling moves a block's leading comment to the parent key on reload.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml as pyyaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from model.atomic import write_text
from steps.config import (
    PARAMS_FILE,
    ConfigError,
    Params,
    flat_params,
    load_params,
    parse_params,
)

PROFILES_DIR = Path("profiles")


def available(profiles_dir: Path = PROFILES_DIR) -> list[str]:
    return sorted(p.stem for p in profiles_dir.glob("*.yaml"))


def apply_profile(name: str, params_path: str | Path = PARAMS_FILE, profiles_dir: Path = PROFILES_DIR) -> dict[str, tuple[Any, Any]]:
    """Write the profile into params.yaml (validated first; the file changes only if it is valid).

    Returns the changed parameters as `{"section.key": (old, new)}`.
    """
    profile_path = profiles_dir / f"{name}.yaml"
    if not profile_path.is_file():
        raise ConfigError(f"no profile {name!r} in {profiles_dir}/ (available: {', '.join(available(profiles_dir))})")
    params_path = Path(params_path)
    before = flat_params(load_params(params_path), _sections())
    old_text = params_path.read_text(encoding="utf-8")
    profile_text = profile_path.read_text(encoding="utf-8")
    text = overlay_text(old_text, profile_text, str(profile_path))
    # Validate exactly what load_params will read (PyYAML), before anything is written.
    after = flat_params(parse_params(pyyaml.safe_load(text), f"{params_path} with profile {name}"), _sections())
    if text != old_text:
        write_text(params_path, text)
    return {k: (before.get(k), v) for k, v in after.items() if before.get(k) != v}


def overlay(params: dict[str, Any], profile: dict[str, Any], source: str) -> dict[str, Any]:
    """What applying a profile means, on plain data: each `section.key` of the profile replaces that
    key of params (whole, so a source's `kind`-specific fields never mix with another kind's); a
    top-level scalar replaces its key."""
    merged = json.loads(json.dumps(params))
    for section, value in profile.items():
        if isinstance(value, dict):
            if not isinstance(merged.get(section), dict):
                raise ConfigError(f"{source}: section {section!r} is not in params.yaml")
            merged[section].update(value)
        else:
            merged[section] = value
    return merged


@dataclass(frozen=True)
class Edit:
    """Replace lines [start, end) of params.yaml with `lines` (start == end: insert)."""

    start: int
    end: int
    lines: list[str]


def overlay_text(params_text: str, profile_text: str, source: str) -> str:
    """params.yaml's text with the profile applied (rules in the module docstring); checked against
    `overlay` on the parsed data, so an edit this cannot make in place is an error, never a wrong file."""
    yaml = YAML()  # round-trip loader: it records the line and column of every key and value
    params, profile = yaml.load(params_text), yaml.load(profile_text)
    if not isinstance(profile, CommentedMap):
        raise ConfigError(f"{source}: a profile is a mapping of params.yaml sections")
    lines, profile_lines = params_text.splitlines(keepends=True), profile_text.splitlines(keepends=True)
    edits = []
    for section, value in profile.items():
        if isinstance(value, CommentedMap):
            if not isinstance(params.get(section), CommentedMap):
                raise ConfigError(f"{source}: section {section!r} is not in params.yaml")
            section_end = _block(lines, params, section, len(lines))[1]
            profile_end = _block(profile_lines, profile, section, len(profile_lines))[1]
            for key in value:
                edits.append(_edit(lines, params[section], section_end, profile_lines, value, profile_end, key))
        else:
            edits.append(_edit(lines, params, len(lines), profile_lines, profile, len(profile_lines), section))
    for edit in sorted((e for e in edits if e is not None), key=lambda e: e.start, reverse=True):
        lines[edit.start:edit.end] = edit.lines
    text = "".join(lines)
    expected = overlay(pyyaml.safe_load(params_text), pyyaml.safe_load(profile_text), source)
    if pyyaml.safe_load(text) != expected:
        raise ConfigError(f"{source}: could not apply the profile to params.yaml in place (unusual layout?); "
                          "copy its values into params.yaml by hand")
    return text


def _edit(lines: list[str], mapping: CommentedMap, mapping_end: int, profile_lines: list[str],
          profile_map: CommentedMap, profile_end: int, key: str) -> Edit | None:
    """The edit that gives `key` of `mapping` (params.yaml) the profile's value, or None when equal."""
    new_start, new_end = _block(profile_lines, profile_map, key, profile_end)
    new_lines = profile_lines[new_start:new_end]
    if new_lines and not new_lines[-1].endswith("\n"):
        new_lines[-1] += "\n"
    if key not in mapping:
        # A key params.yaml lacks goes after its section's last line (its own key's column).
        indent = _indent(mapping, next(iter(mapping))) if mapping else 0
        return Edit(mapping_end, mapping_end, _reindent(new_lines, indent - _indent(profile_map, key)))
    if _plain(mapping[key]) == _plain(profile_map[key]):
        return None
    start, end = _block(lines, mapping, key, mapping_end)
    if end - start == 1 and new_end - new_start == 1 and _one_line(mapping, key) and _one_line(profile_map, key):
        value = _strip_comment(new_lines[0][profile_map.lc.value(key)[1]:])
        return Edit(start, end, [_replace_value(lines[start], mapping.lc.value(key)[1], value)])
    return Edit(start, end, _reindent(new_lines, _indent(mapping, key) - _indent(profile_map, key)))


def _block(lines: list[str], mapping: CommentedMap, key: str, mapping_end: int) -> tuple[int, int]:
    """Lines [start, end) of `key` and its value: up to the next key of the same mapping, less the
    blank lines and comment lines at the key's column or left of it (they introduce what follows)."""
    keys = list(mapping)
    position = keys.index(key)
    start = mapping.lc.key(key)[0]
    end = mapping.lc.key(keys[position + 1])[0] if position + 1 < len(keys) else mapping_end
    column = _indent(mapping, key)
    while end > start + 1 and _introduces_next(lines[end - 1], column):
        end -= 1
    return start, end


def _introduces_next(line: str, column: int) -> bool:
    stripped = line.lstrip(" ")
    return not stripped.strip() or (stripped.startswith("#") and len(line) - len(stripped) <= column)


def _indent(mapping: CommentedMap, key: str) -> int:
    return mapping.lc.key(key)[1]


def _one_line(mapping: CommentedMap, key: str) -> bool:
    return mapping.lc.value(key)[0] == mapping.lc.key(key)[0]


def _reindent(lines: list[str], shift: int) -> list[str]:
    if shift >= 0:
        return [" " * shift + line if line.strip() else line for line in lines]
    return [line[-shift:] if line[:-shift].strip() == "" else line.lstrip(" ") for line in lines]


def _replace_value(line: str, value_column: int, value: str) -> str:
    """`line` with its value replaced; its comment kept, at its column when the value still fits."""
    old = line[value_column:].rstrip("\n")
    old_value = _strip_comment(old)
    comment = old[len(old_value):].lstrip(" ")
    if not comment:
        return line[:value_column] + value + "\n"
    column = value_column + len(old) - len(comment)
    pad = max(1, column - value_column - len(value))
    return line[:value_column] + value + " " * pad + comment + "\n"


def _strip_comment(text: str) -> str:
    """A one-line YAML value without its trailing comment: a `#` after a space, outside quotes."""
    text = text.rstrip("\n")
    quote = None
    for i, char in enumerate(text):
        if quote == "'" and char == "'":
            quote = None  # '' (an escaped quote) closes and reopens: same result
        elif quote == '"' and char == '"' and text[i - 1] != "\\":
            quote = None
        elif quote is None and char in "'\"":
            quote = char
        elif quote is None and char == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i].rstrip()
    return text.rstrip()


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _sections() -> list[str]:
    return list(Params.model_fields)
