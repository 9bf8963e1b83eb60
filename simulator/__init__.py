"""A deterministic network simulator that drives shoal's protocol engine in virtual time."""
