"""shoal's membership layer: SWIM with Lifeguard, on HashiCorp memberlist's wire protocol."""

__version__ = "0.1.0"
