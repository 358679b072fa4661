"""Data: labelled examples for classifiers (examples) and text for causal LMs (causal: sources, document packing)."""
