"""Signed webhooks (Standard Webhooks): endpoints, an outbox over the audit trail, deliveries."""
