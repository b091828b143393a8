"""Optimisation actions: recipes that build candidates, and the search that keeps one only if it wins."""
