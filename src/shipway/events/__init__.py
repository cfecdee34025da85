"""events feature."""
