"""Identity: password hashing, tokens, the principal a request acts for."""
