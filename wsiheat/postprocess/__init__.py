"""Post-processing of heatmaps: smoothing, lesion points, slide scores (a registry), the learned lesion scorer."""
