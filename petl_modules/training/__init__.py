"""The recipe machinery shared by every recipe: composition, the run flow, Brain, checkpoints (see the package docstring)."""
