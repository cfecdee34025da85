"""idempotency feature."""
