"""walletd on a Citus cluster: the table layout (layout.py), the step of `walletd migrate` that
applies it (distribute.py), the Citus editions of the schema's functions (write_batch.sql: the batch
write; chain.sql: sealing the journal), and the ledger's Citus steps (ledger.py, predictions.py).
docs/citus.md explains the choices."""
