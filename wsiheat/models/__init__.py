"""wsiheat.models."""
