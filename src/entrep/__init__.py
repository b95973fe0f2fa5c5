"""entrep: classify and search ENT endoscopy images."""

__version__ = "0.1.0"
