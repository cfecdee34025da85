"""versions feature."""
