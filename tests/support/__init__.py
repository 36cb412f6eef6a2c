"""Helpers the test suite and the benchmark share. Under tests/, so `pip install .` never ships them."""
