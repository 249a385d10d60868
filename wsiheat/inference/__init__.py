"""Inference: a model loaded once (HeatmapModel), tissue-only heatmaps in memory, their output files."""
