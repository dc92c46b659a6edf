"""The ``vqgan`` command: a table of sub-commands, each a typed, documented function (as litgpt's ``__main__``).

jsonargparse builds each command's options from its function's signature and ``Args:`` docs, so ``--help`` and the
Python API cannot drift. A parse error is one line and exits 2; an error raised by the command is one line and
returns 2 (configuration, missing file) or 1 (damaged checkpoint, non-finite run).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import logging
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml
from jsonargparse import ArgumentParser

from vqgan.config import ConfigError, add_run_config_arguments, run_config_from_namespace, to_dict
from vqgan.config_checks import describe_parse_error
from vqgan.registry import Registry, UnknownNameError


@dataclass
class Command:
    """A sub-command: the function it runs and, when it takes a run config, the presets that seed it."""

    fn: Callable[..., int | None]
    presets: Registry | None = None


COMMANDS: Registry[Command] = Registry("command")

#: Help of the parameters several commands share, written once (a function's own ``Args:`` line wins).
SHARED_HELP = {
    "device": "cpu, cuda, cuda:N, or auto (cuda when available)",
    "ckpt": "the tokenizer: a training checkpoint (.ckpt) or a pretrained folder",
    "output": "output folder",
    "data": "what to evaluate: a folder of images (all of them, at the model's resolution), a YAML file of data "
    "options, or --data.KEY options over the checkpoint's data (default: the checkpoint's validation data)",
    "seed": "random seed",
    "progress": "show a progress bar (on stderr)",
}


def command(name: str, presets: Registry | None = None) -> Callable:
    """Register ``fn`` as the sub-command ``name``; ``presets`` seed its run config (``--preset``)."""

    def wrap(fn: Callable[..., int | None]) -> Callable[..., int | None]:
        COMMANDS.register(name, (fn.__doc__ or "").strip().split("\n")[0])(Command(fn, presets))
        return fn

    return wrap


def report_skipped(name: str, skipped: int, total: int) -> int:
    """The exit status of a command that skips unreadable user files (each logged as a warning): 0 when none
    was skipped; else a summary line on stderr and 1, so that scripts notice (the rest was written)."""
    if not skipped:
        return 0
    print(f"vqgan {name}: skipped {skipped} of {total} input file(s) that could not be read (see the warnings "
          "above); the others were processed", file=sys.stderr)
    return 1


def run_training(train: Callable[[], dict[str, Any]], config: Any, max_steps: int | None, keys: tuple) -> int:
    """Run ``train()`` (``fit``, ``fit-prior``); rank zero prints the ``keys`` of its metrics as JSON.
    ``max_steps`` sets ``train.max_steps`` and clears ``train.max_epochs``."""
    from vqgan.train.harness import is_rank_zero

    if max_steps is not None:
        config.train.max_steps, config.train.max_epochs = max_steps, None
    metrics = train()
    if is_rank_zero():  # under DDP every rank returns here; one summary
        print(json.dumps({k: metrics[k] for k in keys if k in metrics}))
    return 0


def _run_config_class(fn: Callable) -> type | None:
    hint = typing.get_type_hints(fn).get("config")
    return hint if dataclasses.is_dataclass(hint) else None


def command_parser(name: str, prog: str | None = None):
    """The jsonargparse parser of sub-command ``name``, built from its function's signature and docstring."""
    cmd = COMMANDS[name]
    doc = inspect.cleandoc(cmd.fn.__doc__ or "").split("\n\nArgs:")[0]
    # jsonargparse's own --print_config would print only what was given: add_run_config_arguments has ours.
    parser = ArgumentParser(prog=prog or f"vqgan {name}", description=doc, exit_on_error=False, allow_abbrev=False,
                            print_config=None)
    config_cls = _run_config_class(cmd.fn)
    if config_cls is not None:
        add_run_config_arguments(parser, config_cls, cmd.presets)
    parser.add_function_arguments(cmd.fn, skip={"config"} if config_cls else None, as_group=False)
    params = set(inspect.signature(cmd.fn).parameters) - ({"config"} if config_cls else set())
    for action in parser._actions:  # the function's own options: dashes, and the shared help
        if action.dest in params and action.option_strings:
            dashed = "--" + action.dest.rstrip("_").replace("_", "-")
            for alias in (dashed, "--" + action.dest.rstrip("_")):
                parser._option_string_actions[alias] = action
            action.option_strings = [dashed]
            action.help = action.help or SHARED_HELP.get(action.dest)
    return parser


def build_parser():
    """The ``vqgan`` parser: one sub-command per registered function (as litgpt's ``__main__``)."""
    parser = ArgumentParser(
        prog="vqgan", exit_on_error=False, allow_abbrev=False,
        description="Train, evaluate, inspect and use vector-quantized image and video tokenizers and their priors.",
    )
    sub = parser.add_subcommands(dest="command", required=True)
    for name, summary in COMMANDS.describe().items():
        sub.add_subcommand(name, command_parser(name), help=summary)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is at each record: tests and notebooks replace (and close) it."""

    stream = property(lambda self: sys.stderr, lambda self, value: None)


def _log_to_stderr() -> None:
    # Our own messages only: Lightning configures its loggers itself (a root handler would print them twice).
    log = logging.getLogger("vqgan")
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)


def _kwargs(cmd: Command, ns: Any) -> dict[str, Any]:
    """The function's keyword arguments from the parsed namespace (only what was given)."""
    params = inspect.signature(cmd.fn).parameters
    config_cls = _run_config_class(cmd.fn)
    kwargs = {k: v for k, v in ns.as_dict().items() if k in params}
    if config_cls is not None:
        kwargs["config"] = run_config_from_namespace(config_cls, ns)
    if "device" in params and kwargs.get("device", params["device"].default) == "auto":
        import torch

        kwargs["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    return kwargs


def parse_command(argv: list[str]) -> tuple[str, Any]:
    """Parse ``vqgan ARGV`` without running anything: the sub-command's name and the options given. A mistake is
    one line on stderr and exit code 2; ``--help`` prints and exits 0."""
    if not argv or argv[0].startswith("-"):  # `vqgan --help`, or no command at all
        _parse(build_parser(), argv, "vqgan", {})
    # Picking the sub-command (the first word) here builds only its parser (all of them take a second).
    try:
        cmd = COMMANDS[argv[0]]
    except UnknownNameError as e:
        print(f"vqgan: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return argv[0], _parse(command_parser(argv[0]), argv[1:], f"vqgan {argv[0]}", _option_types(cmd.fn))


def main(argv: list[str] | None = None) -> int:
    """Run ``vqgan ARGV``; returns the exit code (a parse error exits 2, ``--help`` exits 0)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _log_to_stderr()
    name, ns = parse_command(argv)
    cmd = COMMANDS[name]
    try:
        kwargs = _kwargs(cmd, ns)
        if ns.get("print_config"):
            print(yaml.safe_dump(to_dict(kwargs["config"]), sort_keys=False), end="")
            return 0
        rc = cmd.fn(**kwargs)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"vqgan {name}: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        # A damaged or unsafe checkpoint, or a run stopped by non-finite losses: a message, not a traceback.
        # (Imported here: those modules load torch, and they are loaded already when one of these is raised.)
        from vqgan.models.io import CheckpointError
        from vqgan.train.module import NonFiniteLossError

        if not isinstance(e, (CheckpointError, NonFiniteLossError)):
            raise
        print(f"vqgan {name}: error: {e}", file=sys.stderr)
        return 1
    return int(rc or 0)


def _option_types(fn: Callable) -> dict[str, Any]:
    """Name -> type of a command's top-level options: its run config's fields and its own parameters."""
    config_cls = _run_config_class(fn)
    own = {k: v for k, v in typing.get_type_hints(fn).items() if k not in ("config", "return")}
    return {**(typing.get_type_hints(config_cls) if config_cls else {}), **own}


def _parse(parser, argv: list[str], prog: str, option_types: dict[str, Any]):
    """Parse what was given (no defaults); a mistake is one line on stderr and exit code 2."""
    try:
        return parser.parse_args(argv, defaults=False)
    except argparse.ArgumentError as e:
        print(f"{prog}: error: {describe_parse_error(parser, argv, e, option_types)}", file=sys.stderr)
        raise SystemExit(2) from None


# The sub-commands, imported for their registrations (they import `command` from here, hence at the end).
from vqgan.cli import evaluate, interop, prior, stage1  # noqa: E402, F401

if __name__ == "__main__":
    raise SystemExit(main())
