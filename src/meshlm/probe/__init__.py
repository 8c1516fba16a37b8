"""Diagnostics of recursion (spec section 5): states, update magnitudes, CKA, spectra, router weights."""
