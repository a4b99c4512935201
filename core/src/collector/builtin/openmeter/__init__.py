"""The built-in ``openmeter`` exporter."""
