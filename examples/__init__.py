"""Example models bundled with perfguard: the seed CNN and an MLP."""
