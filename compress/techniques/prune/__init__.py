"""Pruning: magnitude (masks) and structured (units removed), with decoder-specific depth/width pruning."""
