"""The version of collector-plugin-s3: its one source, read by setuptools (pyproject.toml
[tool.setuptools.dynamic]) without importing the plugin."""

__version__ = "0.2.0"
