"""Models: backbones (a registry), InceptionV3, ImageNet weights, the multi-tower model and its file contract."""
