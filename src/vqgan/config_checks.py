"""Checks that make a configuration mistake cost seconds, not a run: value types against the dataclasses' type
hints (so that the Python API is checked like the command line), unknown keys with the valid ones and the
closest match, and output paths that must stay inside the run folder.

Used by :meth:`vqgan.config.ExperimentConfig.validate`, :func:`vqgan.config.load_config` and the ``vqgan`` command.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union


def _config_error(message: str) -> Exception:
    from vqgan.config import ConfigError

    return ConfigError(message)


# -- types -------------------------------------------------------------------------------------------------------
def describe_type(hint: Any) -> str:
    """A short human description of a type hint: ``one of ['vq', 'ema']``, ``an integer or null`` ..."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return f"one of {list(args)}"
    if origin in (Union, types.UnionType):
        parts = [describe_type(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if origin is list:
        return f"a list of {describe_type(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    return names.get(hint, f"a {getattr(hint, '__name__', hint)}")


def matches_type(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits ``hint`` (the forms used by the config dataclasses; unknown forms are accepted)."""
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
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
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
                raise _config_error(f"{key} must be a {hint.__name__} (a mapping of its keys), got {value!r}")
            check_types(value, key + ".")
        elif not matches_type(value, hint):
            raise _config_error(f"{key}={value!r} is invalid: expected {describe_type(hint)}")


# -- unknown keys --------------------------------------------------------------------------------------------------
def key_hint(key: str, root: type | None = None) -> str:
    """``unknown key 'model.chh'; did you mean 'model.ch'? valid keys of model: ...`` for a dotted key."""
    if root is None:
        from vqgan.config import ExperimentConfig

        root = ExperimentConfig
    cls, parts, known = root, key.split("."), []
    for part in parts[:-1]:
        hints = typing.get_type_hints(cls)
        if part in hints and dataclasses.is_dataclass(hints[part]):
            cls, known = hints[part], [*known, part]
        else:
            break
    section = ".".join(known)
    wrong = parts[len(known)]
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(wrong, names, n=1, cutoff=0.6)
    dotted = (section + "." if section else "") + (close[0] if close else "")
    msg = f"unknown key {key!r}"
    msg += f"; did you mean {dotted!r}?" if close else "."
    return msg + f" Valid keys of {section or 'the experiment'}: {', '.join(names)}"


def explain_parser_error(message: str) -> str:
    """Add :func:`key_hint` to jsonargparse's messages about unknown keys (which list no valid choices)."""
    keys = []
    if m := re.search(r"[Uu]nrecognized arguments: (.*)", message):
        keys = [t[2:].split("=", 1)[0] for t in m.group(1).split() if t.startswith("--")]
    elif m := re.search(r"Group '([\w.]+)' does not accept option '([\w.]+)'", message):
        keys = [f"{m.group(1)}.{m.group(2)}"]
    elif m := re.search(r"(?:Option|Key) '([\w.]+)' is not (?:accepted|expected)", message):
        keys = [m.group(1)]
    hints = [key_hint(k) for k in keys if "." in k or k.isidentifier()]
    return message if not hints else message.rstrip() + "\n" + "\n".join(hints)


def unknown_cli_keys(argv: list[str], sections: tuple[str, ...]) -> str | None:
    """The first ``--section.key`` option of ``argv`` that names no field (for ``sections`` of the experiment),
    explained by :func:`key_hint`; ``None`` when all are known. Lets the command line say what a typo should have
    been instead of printing its whole usage."""
    from vqgan.config import ExperimentConfig

    for token in argv:
        if not token.startswith("--") or "." not in token:
            continue
        key = token[2:].split("=", 1)[0]
        if key.split(".", 1)[0] not in sections:
            continue
        cls: Any = ExperimentConfig
        for part in key.split("."):
            hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
            if part not in hints:
                return key_hint(key)
            cls = hints[part]
    return None


# -- paths ---------------------------------------------------------------------------------------------------------
def resolve_output_path(run_dir: str | Path, path: str | Path, key: str = "path") -> Path:
    """Where a path taken from a configuration may be written.

    A relative path is resolved inside ``run_dir`` and must stay there (``../x``, or a symbolic link that leads
    out, is refused); an absolute path is the user's explicit choice and is returned unchanged.

    Raises:
        ConfigError: naming ``key``, when a relative path would leave the run folder.
    """
    path = Path(path).expanduser()
    if path.is_absolute():
        return path
    base = Path(run_dir).resolve()
    target = (base / path).resolve()
    if target != base and base not in target.parents:
        raise _config_error(
            f"{key}={str(path)!r} would write outside the run folder {base}; use a path inside it, or an absolute "
            "path if that is really meant"
        )
    return target


def check_plain_name(name: str, key: str = "name") -> None:
    """A run name is used for labels (and may become a file name): refuse separators, ``..`` and control bytes."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or not name.isprintable():
        raise _config_error(f"{key}={name!r} must be a plain name (no '/', '\\\\', '..' or control characters)")
