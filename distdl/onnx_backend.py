"""The onnx inference backend: a checkpoint's exported model (distdl.onnx_export) run by
onnxruntime, called as the Predictor calls the torch module, ``model(**features)`` -> a tensor,
so preprocessing and the task's post-processing stay the same code for both backends.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from distdl import models

BACKENDS = ("torch", "onnx")


class OnnxModel:
    """An onnxruntime session over the exported model's bytes; ``cfg`` is the model's config
    (a task may read it, e.g. a GAN's latent size)."""

    def __init__(self, model_bytes: bytes, meta: dict, threads: Optional[int], device: torch.device):
        import onnxruntime

        provider = "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"
        if provider not in onnxruntime.get_available_providers():
            raise RuntimeError(f"the onnx backend on {device} needs onnxruntime's {provider}, which this "
                               f"onnxruntime {onnxruntime.__version__} lacks (for GPUs: the onnxruntime-gpu package)")
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads  # as torch.set_num_threads: the actor's CPU share
        self.session = onnxruntime.InferenceSession(model_bytes, options, providers=[provider])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.cfg = models.config_from_args(meta["family"], meta["args"])
        self.device = device

    def __call__(self, **features: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {name: features[name].cpu().numpy() for name in self.input_names})[0]
        return torch.from_numpy(out).to(self.device)

    def to(self, device: Any) -> "OnnxModel":
        return self  # the session was made for its device
