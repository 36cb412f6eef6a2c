"""walletd on a Citus cluster: the table layout (layout.py), the step of `walletd migrate` that
applies it (distribute.py) and the distributed edition of the batch write (write_batch.sql).
docs/citus.md explains the choices."""
