"""Compression techniques, each one package with its settings and one entry: distill, prune, quantize, factorize."""
