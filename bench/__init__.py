"""jetsink bench."""
