"""jetsink workers."""
