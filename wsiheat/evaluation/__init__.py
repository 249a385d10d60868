"""Evaluation: patch metrics, slide AUC and the CAMELYON16 lesion FROC, with bootstrap intervals."""
