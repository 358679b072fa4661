"""Recipes and their execution: the recipe schema, the stage runner with its cache, and the search."""
