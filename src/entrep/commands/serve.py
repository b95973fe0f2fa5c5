"""CLI commands for this area (registered on entrep.cli.app)."""

from __future__ import annotations

from entrep.cli import app, console  # noqa: F401
