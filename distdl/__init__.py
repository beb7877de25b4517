"""distdl: distributed deep learning on Ray — one job spec from data to checkpoint."""
import os

# Models and tokenizers load only from local folders: set before any Hugging Face library is
# imported (they read these once), so a missing file fails instead of reaching the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

__version__ = "0.1.0"
