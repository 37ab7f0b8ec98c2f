"""Enforcement: turns a client's statements into policy inputs and applies the decisions."""
