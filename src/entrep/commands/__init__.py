"""CLI commands, one module per area; importing this package registers them on entrep.cli.app."""

from entrep.commands import data, embed, model, retrieval, serve, synth  # noqa: F401
