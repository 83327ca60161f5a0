"""plugin package (filled by its own issue)."""
