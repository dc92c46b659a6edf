"""Property-based tests of the configuration parser: any valid configuration survives ``dump_config`` ->
``load_config`` unchanged, random dotted overrides set exactly their keys, and unknown keys are always named.

Small, derandomized example counts so that CI stays fast and deterministic.
"""

from __future__ import annotations

import dataclasses
import json
import string
import typing
from typing import Any, Literal, Union

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vqgan.config import ConfigError, ExperimentConfig, dump_config, load_config, to_dict

# One thread, and vqgan log handlers restored after each test (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread_and_own_log_handlers")

SETTINGS = settings(
    max_examples=12, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
TEXT = st.text(alphabet=string.ascii_letters + string.digits + "_-./", min_size=1, max_size=12)


def value_strategy(hint: Any) -> st.SearchStrategy:
    """Values of a config field's type (finite numbers; strings of path-like characters)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return st.sampled_from(args)
    if origin is Union or str(origin) == "<class 'types.UnionType'>":
        return st.one_of(*[value_strategy(a) for a in args])
    if hint is type(None):
        return st.none()
    if origin is list:
        return st.lists(value_strategy(args[0]), max_size=4)
    if hint is bool:
        return st.booleans()
    if hint is int:
        return st.integers(-(10**6), 10**9)
    if hint is float:
        return st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False) | st.floats(1e-9, 1e-3)
    if hint is str:
        return TEXT
    raise AssertionError(f"no strategy for {hint}")


def leaves(cls: type = ExperimentConfig, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> type hint of every leaf field."""
    out = {}
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            out.update(leaves(hint, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = hint
    return out


LEAVES = leaves()


def _set(cfg: Any, key: str, value: Any) -> None:
    *path, last = key.split(".")
    for p in path:
        cfg = getattr(cfg, p)
    setattr(cfg, last, value)


def _get(d: dict, key: str) -> Any:
    for p in key.split("."):
        d = d[p]
    return d


def _cli(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


@st.composite
def configs(draw):
    cfg = ExperimentConfig()
    for key in draw(st.lists(st.sampled_from(sorted(LEAVES)), max_size=25, unique=True)):
        _set(cfg, key, draw(value_strategy(LEAVES[key])))
    return cfg


@SETTINGS
@given(configs())
def test_dump_then_load_round_trips(tmp_path_factory, cfg):
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    dump_config(cfg, path)
    assert to_dict(load_config(path)) == to_dict(cfg)


@SETTINGS
@given(st.data())
def test_random_dotted_overrides_set_exactly_their_keys(data):
    keys = data.draw(st.lists(st.sampled_from(sorted(LEAVES)), min_size=1, max_size=8, unique=True))
    values = {k: data.draw(value_strategy(LEAVES[k])) for k in keys}
    # "--key=value": a negative number in scientific notation ("-1e-06") as a separate word looks like an option.
    args = [f"--{k}={_cli(v)}" for k, v in values.items()]
    loaded = to_dict(load_config(overrides=args))
    default = to_dict(ExperimentConfig())
    for key in LEAVES:
        assert _get(loaded, key) == values.get(key, _get(default, key)), key


@SETTINGS
@given(st.sampled_from(["model", "loss", "data", "train", "discriminator", "model.quantizer"]),
       st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=10))
def test_unknown_keys_are_always_named(section, name):
    key = f"{section}.{name}"
    if key in LEAVES or f"{key}." in " ".join(f"{k}." for k in LEAVES):
        return  # a real key (or section) by chance
    try:
        load_config(overrides=[f"--{key}", "1"])
    except ConfigError as e:
        assert key in str(e) and "Valid keys of" in str(e)
    else:
        raise AssertionError(f"--{key} was accepted")
