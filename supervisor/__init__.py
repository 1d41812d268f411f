"""jetsink supervisor."""
