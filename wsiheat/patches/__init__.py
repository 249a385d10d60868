"""wsiheat.patches."""
