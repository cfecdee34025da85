"""Config vars and secrets per (deployment, environment): versioned, secrets encrypted."""
