"""las-builder: build LAS and train LandSegmenter on it."""

__version__ = "0.1.0"
