"""Built-in processors: mapping, filter, validate, attributes, ensure_id, dedupe, aggregate."""
