"""CLI commands, one module per area (see entrep.cli.app.COMMAND_MODULES)."""
