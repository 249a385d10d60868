"""wsiheat.training."""
