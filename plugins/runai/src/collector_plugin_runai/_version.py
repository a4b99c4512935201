"""The version of collector-plugin-runai: its one source, read by setuptools (pyproject.toml
[tool.setuptools.dynamic]) without importing the plugin."""

__version__ = "0.2.0"
