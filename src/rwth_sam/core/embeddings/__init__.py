"""Embeddings: the segmenter of one (image, model, window), its memory and disk caches, and the workspace that keeps them."""
