"""wsiheat.postprocess."""
