"""Training: streaming datasets with augmentation, the training loop, distribution strategies."""
