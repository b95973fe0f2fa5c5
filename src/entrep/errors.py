"""Error types. Every error the user can fix derives from EntrepError and is
printed by the CLI as a single line naming the file or value and the fix."""

from __future__ import annotations


class EntrepError(Exception):
    """Base for errors caused by input, configuration or environment."""


class UserError(EntrepError, ValueError):
    """Bad command-line usage or arguments."""


class ModelError(EntrepError, RuntimeError):
    """A fitted model folder that is missing, incomplete or incompatible."""


class WeightsError(EntrepError, RuntimeError):
    """Model weights that cannot be found, reached or loaded strictly."""
