"""The `entrep` command line: parses arguments and calls the library, nothing more."""

from entrep.cli.app import app, load_commands, main

load_commands()

__all__ = ["app", "main"]
