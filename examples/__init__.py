"""Runnable examples of service discovery on 127.0.0.1 (see each script's docstring)."""
