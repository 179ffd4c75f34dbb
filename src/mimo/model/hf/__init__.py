"""Hugging Face models as mimo modules: configs read from the folder, stage slices, weights read lazily."""
