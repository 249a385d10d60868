"""wsiheat.scale."""
