"""When things run: one actor per wallet, and the group committer that batches their work."""
