"""Events to the payment service (issue 11): pending expiry, webhook delivery, signatures."""
