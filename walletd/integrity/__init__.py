"""The journal's integrity: sealing it into a hash chain and auditing it (jobs and checks)."""
