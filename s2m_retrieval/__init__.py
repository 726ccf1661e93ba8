"""s2m-retrieval: sketch-based medical image retrieval the Sketch2MedI way."""

__version__ = "0.1.0"
