"""deployments feature."""
