"""The built-in ``http`` receiver."""
