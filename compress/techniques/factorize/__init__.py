"""Factorization: SVD low-rank replacement of Linear/Conv layers by factor pairs."""
