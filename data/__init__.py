"""Datasets, image I/O and face geometry. Nothing runs on import."""
