"""Whole-slide images: the slide reader, the tissue mask, pyramid writing and tumor annotations."""
