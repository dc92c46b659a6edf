"""Checks that make a configuration mistake cost seconds, not a run: value types against the type hints,
unknown keys with their closest match, and output paths that must stay inside the run folder."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from vqgan.config import ConfigError, ExperimentConfig


# -- types ----------------------------------------------------------------------------------------------
def describe_type(hint: Any) -> str:
    """A short human description of a type hint: ``one of ['vq', 'ema']``, ``an integer or null`` ..."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return f"one of {list(args)}"
    if origin in (Union, types.UnionType):
        parts = [describe_type(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if origin is list:
        item = describe_type(args[0]).removeprefix("a ").removeprefix("an ") if args else ""
        return f"a list of {item}s" if args else "a list"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    return names.get(hint, f"a {getattr(hint, '__name__', hint)}")


def matches_type(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits ``hint`` (the forms the config dataclasses use; unknown forms are accepted)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (Union, types.UnionType):
        return any(matches_type(value, a) for a in args)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple)) and (not args or all(matches_type(v, args[0]) for v in value))
    if hint in (int, float):  # a bool is an int to Python, not to a config
        return isinstance(value, int if hint is int else (int, float)) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def check_types(config: Any, prefix: str = "") -> None:
    """Raise ``ConfigError`` naming the first field of the (nested) config dataclass whose value has the wrong
    type, with the expected type or the valid choices."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        key, value, hint = f"{prefix}{f.name}", getattr(config, f.name), hints[f.name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, hint):
                raise ConfigError(f"{key} must be a {hint.__name__} (a mapping of its keys), got {value!r}")
            check_types(value, key + ".")
        elif not matches_type(value, hint):
            raise ConfigError(f"{key}={value!r} is invalid: expected {describe_type(hint)}")


# -- unknown keys ---------------------------------------------------------------------------------------
Fields = dict[str, Any]  # the top level of a set of options: name -> type hint


def _fields(root: type | Fields | None) -> Fields:
    root = ExperimentConfig if root is None else root
    return dict(root) if isinstance(root, dict) else typing.get_type_hints(root)


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass of a hint (``DataConfig``, or ``DataConfig | str | None``), else ``None``."""
    for h in (hint, *typing.get_args(hint)):
        if dataclasses.is_dataclass(h):
            return h
    return None


def _unknown_part(key: str, root: type | Fields | None) -> bool:
    """Whether some part of the dotted ``key`` names no field."""
    fields: Fields | None = _fields(root)
    for part in key.split("."):
        if fields is None or part not in fields:
            return True
        cls = _dataclass_in(fields[part])
        fields = typing.get_type_hints(cls) if cls else None
    return False


def key_hint(key: str, root: type | Fields | None = None) -> str:
    """``unknown key 'model.chh'; did you mean 'model.ch'? Valid keys of model: ...`` for a dotted key of
    the dataclass ``root`` (default: :class:`~vqgan.config.ExperimentConfig`) or a mapping of hints."""
    fields, parts, known = _fields(root), key.split("."), []
    for part in parts[:-1]:
        cls = _dataclass_in(fields.get(part))
        if cls is None:
            break
        fields, known = typing.get_type_hints(cls), [*known, part]
    section = ".".join(known)
    close = difflib.get_close_matches(parts[len(known)], list(fields), n=1, cutoff=0.6)
    dotted = (section + "." if section else "") + (close[0] if close else "")
    hint = f"; did you mean {dotted!r}?" if close else "."
    return f"unknown key {key!r}{hint} Valid keys of {section or 'the run'}: {', '.join(fields)}"


def _unknown_yaml_key(data: Any, root: type | Fields | None, prefix: str = "") -> str | None:
    """The first dotted key of a loaded YAML mapping that names no field of ``root``."""
    if not isinstance(data, dict):
        return None
    fields = _fields(root)
    for k, v in data.items():
        if k not in fields:
            return prefix + str(k)
        cls = _dataclass_in(fields[k])
        if cls is not None and (found := _unknown_yaml_key(v, cls, f"{prefix}{k}.")):
            return found
    return None


def describe_parse_error(
    parser: Any, argv: list[str], error: Exception, root: type | Fields | None = None
) -> str:
    """One line for what jsonargparse refused in ``argv``: an unknown option or ``--config`` file key (no
    field of ``root``, the options' dataclass or top-level hints) with its closest match, else its message."""
    known = parser._option_string_actions  # argparse's own table of option strings
    sections = {k: v for k, v in _fields(root).items() if _dataclass_in(v)}  # the options with dotted keys
    for token in argv:
        if not token.startswith("--") or len(token) == 2:
            continue
        key = token[2:].split("=", 1)[0].rstrip("+")
        if f"--{key}" in known or ("." in key and not _unknown_part(key, root)):
            continue
        if "." in key and difflib.get_close_matches(key.split(".")[0], list(sections), n=1):
            return key_hint(key, sections)
        shown = [s for action in parser._actions for s in action.option_strings if s.startswith("--")]
        close = difflib.get_close_matches(f"--{key}", shown, n=1)
        return f"unknown option --{key}" + (f"; did you mean {close[0]}?" if close else "") + " (see --help)"
    files = [argv[i + 1] for i, t in enumerate(argv[:-1]) if t == "--config"]
    for file in files + [t.removeprefix("--config=") for t in argv if t.startswith("--config=")]:
        try:
            data = yaml.safe_load(Path(file).read_text())
        except (OSError, yaml.YAMLError):
            continue
        if (wrong := _unknown_yaml_key(data, root)) is not None:
            return f"{file}: {key_hint(wrong, root)}"
    return " ".join(str(error).split())


# -- paths ----------------------------------------------------------------------------------------------
def resolve_output_path(run_dir: str | Path, path: str | Path, key: str = "path") -> Path:
    """A relative ``path`` from a configuration, resolved inside ``run_dir``: leaving it (``../x``, a link) is
    a ``ConfigError`` naming ``key``. An absolute path is the user's explicit choice, returned unchanged."""
    path = Path(path).expanduser()
    if path.is_absolute():
        return path
    base = Path(run_dir).resolve()
    target = (base / path).resolve()
    if target != base and base not in target.parents:
        raise ConfigError(
            f"{key}={str(path)!r} would write outside the run folder {base}; use a path inside it, or an "
            "absolute path if that is really meant"
        )
    return target


def check_plain_name(name: str, key: str = "name") -> None:
    """A run name labels things (and may become a file name): refuse separators, ``..`` and control bytes."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or not name.isprintable():
        raise ConfigError(f"{key}={name!r} must be a plain name (no '/', '\\\\', '..' or control characters)")
