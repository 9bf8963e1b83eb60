"""The Serf layer: tags, Lamport clocks, intents, user events and queries."""
