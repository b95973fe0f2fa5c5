"""The `entrep` command line: parses arguments and calls the library, nothing more.

Every command reports bad input as one line ``error: ...`` and exit code 2;
``--verbose`` shows tracebacks and debug logs.
"""

from __future__ import annotations

import json
import logging
import sys

import typer
from rich.console import Console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Classify and search ENT endoscopy images (ENTRep): prototypes + heads + hybrid inference + FAISS retrieval.",
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
_VERBOSE = {"on": False}


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logs and full tracebacks.")) -> None:
    _VERBOSE["on"] = verbose
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s" if verbose else "%(levelname)s: %(message)s",
        stream=sys.stderr,
    )


def _emit_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def main() -> None:
    """Console-script entry point: one-line errors for known failures."""
    from entrep.errors import EntrepError

    try:
        app()
    except (EntrepError, FileNotFoundError) as e:
        if _VERBOSE["on"]:
            raise
        console.print(f"[red]error:[/red] {e}", markup=True, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted; finished work is kept (outputs are written atomically)")
        sys.exit(130)


# Commands are registered by entrep.commands.* modules (one per area) so that
# separate areas can evolve without editing one big file.
from entrep import commands as _commands  # noqa: E402,F401

if __name__ == "__main__":  # pragma: no cover
    main()
