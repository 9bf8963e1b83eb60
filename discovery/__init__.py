"""Service registration and discovery on top of shoal's gossip membership."""
