"""releases feature."""
