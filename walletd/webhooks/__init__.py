"""Webhooks: where a payment service's events may be sent, how each delivery is signed, and how
the endpoints' secrets are kept at rest. The events themselves are the outbox's
(persistence/outbox.py); the loop that delivers them is jobs/webhook_delivery.py."""
