"""Offline work: corpora, preprocessing and training."""
