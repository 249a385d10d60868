"""wsiheat.wsi."""
