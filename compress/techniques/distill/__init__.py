"""Distillation: losses, student derivation, cached teacher outputs, the run, recovery training, causal LMs."""
