"""Built-in tasks; each module holds one task."""
