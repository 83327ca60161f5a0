"""worker package (filled by its own issue)."""
