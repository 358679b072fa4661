"""Models: the artifacts passes exchange, loading and saving, builders, packaged models, anatomy and surgery."""
