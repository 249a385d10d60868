"""wsiheat.inference."""
