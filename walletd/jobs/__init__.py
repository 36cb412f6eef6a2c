"""Jobs: walletd's background loops, one module each, run under jobs/supervision.py (restarted
after a crash, stopped within a bound) and started and stopped by the app's resources."""
