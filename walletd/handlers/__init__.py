"""HTTP edge: parse and authenticate, call the ledger, render JSON. No SQL, no money rules."""
