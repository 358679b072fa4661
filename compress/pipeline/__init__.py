"""Recipes and their execution: the recipe schema (`recipe`), the stage runner with its cache (`runner`), scoring
(`score`), the results dict (`results`), and the search (`search`, one `trial`, the `study` on disk)."""
