"""The ``vqgan`` command. Thin: parse options, build a config, call library functions.

Each sub-command lives in a small module of this package and registers itself with :func:`command`; the library
never imports this package.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass

from jsonargparse import ArgumentParser


@dataclass
class Command:
    name: str
    help: str
    build: Callable[[ArgumentParser, list[str]], None]
    run: Callable[[object], int | None]


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str):
    """Register a sub-command: decorate a class with static ``build(parser, argv)`` and ``run(args)``."""

    def wrap(cls):
        COMMANDS[name] = Command(name, help, cls.build, cls.run)
        return cls

    return wrap



class _StderrHandler(logging.StreamHandler):
    """A handler that writes to ``sys.stderr`` as it is when a record is emitted (not when the handler was made),
    so that redirecting stderr (tests, notebooks) never leaves it writing to a closed stream."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass

def preset_from_argv(argv: list[str]) -> str | None:
    """The value of ``--preset`` in ``argv`` (read before parsing: a preset sets the defaults of the options)."""
    for i, a in enumerate(argv):
        if a == "--preset" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--preset="):
            return a.split("=", 1)[1]
    return None


def report_skipped(name: str, skipped: int, total: int) -> int:
    """The exit status of a command that reads user files and skips the unreadable ones (each already logged as a
    warning naming the file): 0 when none was skipped; else a summary line on stderr and 1, so that scripts notice,
    although every readable file was processed and written."""
    if not skipped:
        return 0
    print(f"vqgan {name}: skipped {skipped} of {total} input file(s) that could not be read (see the warnings "
          "above); the others were processed", file=sys.stderr)
    return 1


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else as given."""
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def _load_commands() -> None:
    # Imported for their registrations.
    from vqgan.cli import stage1  # noqa: F401

    for optional in ("evaluate", "prior", "interop", "video", "pipeline"):
        try:
            __import__(f"vqgan.cli.{optional}")
        except ModuleNotFoundError as e:
            if e.name != f"vqgan.cli.{optional}":
                raise


def build_parser(argv: list[str]) -> ArgumentParser:
    _load_commands()
    parser = ArgumentParser(
        prog="vqgan",
        description="Train, evaluate, inspect and use vector-quantized image and video tokenizers and their priors.",
        exit_on_error=True,
    )
    sub = parser.add_subcommands(dest="command", required=True)
    for name, cmd in COMMANDS.items():
        p = ArgumentParser(description=cmd.help)
        cmd.build(p, argv)
        sub.add_subcommand(name, p, help=cmd.help)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Our own messages only: Lightning configures its loggers itself (a root handler would print them twice).
    vqgan_log = logging.getLogger("vqgan")
    if not any(isinstance(h, _StderrHandler) for h in vqgan_log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        vqgan_log.addHandler(handler)
    vqgan_log.setLevel(logging.INFO)
    if argv[:1] == ["fit"]:  # name a mistyped key and its closest match instead of printing the whole usage
        from vqgan.config import EXPERIMENT_SECTIONS
        from vqgan.config_checks import unknown_cli_keys

        problem = unknown_cli_keys(argv[1:], tuple(EXPERIMENT_SECTIONS))
        if problem:
            print(f"vqgan fit: error: {problem}", file=sys.stderr)
            return 2
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    name = args.command
    from vqgan.config import ConfigError

    try:
        rc = COMMANDS[name].run(getattr(args, name))
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


if __name__ == "__main__":
    raise SystemExit(main())
