"""Training loops (explicit, no framework), checkpoints and distributed set-up."""
