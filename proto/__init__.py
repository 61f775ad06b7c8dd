"""Moorage wire contract: messages, unit model, hashes. No I/O."""
