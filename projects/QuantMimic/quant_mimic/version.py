"""The project version (pyproject.toml), recorded in exported files."""

__version__ = "0.1.0"
