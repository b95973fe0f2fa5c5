"""The typer application shared by every command, and the console-script entry point.

Every command reports bad input as one line ``error: ...`` and exit code 2;
``--verbose`` shows tracebacks and debug logs. Commands live in
:mod:`entrep.cli.commands` (one module per area, named in ``COMMAND_MODULES``);
they import ``app``, ``console`` and ``emit_json`` from here, and this module
imports none of them at import time (no cycle).
"""

from __future__ import annotations

import importlib
import json
import logging
import sys

import typer
from rich.console import Console
from rich.markup import escape

#: command modules under entrep.cli.commands; a new command adds its module name here
COMMAND_MODULES = ("data", "synth", "embed", "model", "retrieval", "serve", "review")

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Classify and search ENT endoscopy images (ENTRep): prototypes + heads + hybrid inference + FAISS retrieval.",
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logs and full tracebacks.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s" if verbose else "%(levelname)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def emit_json(obj) -> None:
    """Machine-readable output on stdout (everything else goes to stderr)."""
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def load_commands() -> typer.Typer:
    """Register every command module on ``app`` (idempotent) and return it."""
    for name in COMMAND_MODULES:
        importlib.import_module(f"entrep.cli.commands.{name}")
    return app


def _verbose() -> bool:
    # the callback set the root logger to DEBUG for --verbose; no module state of our own
    return logging.getLogger().getEffectiveLevel() <= logging.DEBUG


def main() -> None:
    """Console-script entry point: one-line errors for known failures."""
    from entrep.errors import EntrepError

    load_commands()
    try:
        app()
    except (EntrepError, FileNotFoundError) as e:
        if _verbose():
            raise
        # file names may hold [brackets]: never let them be read as markup
        console.print(f"[red]error:[/red] {escape(str(e))}", markup=True, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted; finished work is kept (outputs are written atomically)")
        sys.exit(130)
