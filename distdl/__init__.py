"""distdl: distributed deep learning on Ray — one job spec from data to checkpoint."""
__version__ = "0.1.0"
