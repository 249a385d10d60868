"""wsiheat.evaluation."""
