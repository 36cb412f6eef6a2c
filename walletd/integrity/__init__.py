"""The journal's integrity: checking it against its hash chain (the jobs that seal and audit it
run in walletd/jobs/)."""
