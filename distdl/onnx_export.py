"""`distdl export`: a checkpoint's model as an ONNX file that onnxruntime (or any ONNX runtime) runs.

The graph is the model's forward pass on the tensors the checkpoint's preprocessor makes, the
same tensors the Predictor feeds it: decoding and normalizing rows, and turning outputs into
columns (softmax and top-k, PNG encoding), stay with distdl's preprocessor and task. Every
input has a dynamic batch axis; sequences and texts also a dynamic length axis.

The file is written by torch's ONNX exporter (torch.export), then checked: onnxruntime runs it
on two example rows of different lengths and its output is compared with torch's. The file's
metadata names the family, the task, the inputs and the checkpoint's identity.
"""
from __future__ import annotations

import json
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from distdl import checkpoint, models
from distdl.collate import to_tensors
from distdl.paths import write_bytes

FORMATS = ("onnx",)
QUANTIZE = ("int8",)
# The model's output, named by its task: what a runtime's caller reads.
# (Names a model's own nodes do not take: BERT has a node called "embedding".)
OUTPUTS = {"classification": "logits", "embedding": "sentence_embedding", "image_generation": "image"}
EXAMPLE_LENGTHS = (5, 3)  # two rows of different lengths: the exporter sees a length axis that varies
ONNX_EXTRA = "onnx"  # pip install distdl[onnx]


class ExportError(ValueError):
    """A checkpoint that cannot be exported, with the reason."""


@dataclass
class Exported:
    path: str  # where ``export`` wrote it; "" from ``build``
    inputs: dict[str, list[str]]  # input name -> its axes ("batch", "length" or a size)
    output: str
    max_abs_diff: float  # onnxruntime against torch on the example rows
    quantized: Optional[str]

    def describe(self) -> str:
        inputs = ", ".join(f"{name}[{', '.join(axes)}]" for name, axes in self.inputs.items())
        kind = f"{self.quantized} weights" if self.quantized else "fp32"
        return (f"{self.path} ({kind}): inputs {inputs} -> {self.output}; onnxruntime vs torch on "
                f"{len(EXAMPLE_LENGTHS)} example rows: max |diff| {self.max_abs_diff:.2g}")


def example_inputs(model: torch.nn.Module, pre: Any, task: str) -> dict[str, torch.Tensor]:
    """Model inputs for two rows, as the Predictor would feed them (padded by to_tensors)."""
    if task == "image_generation":
        return {"z": torch.randn(len(EXAMPLE_LENGTHS), model.cfg.latent_dim)}
    if pre.kind == "image":
        rows = [np.zeros((pre.size, pre.size, pre.channels), np.uint8) for _ in EXAMPLE_LENGTHS]
    elif pre.kind == "sequence":
        rows = [np.zeros((n, pre.input_size), np.float32) for n in EXAMPLE_LENGTHS]
    elif pre.kind == "text":
        rows = [np.arange(1, n + 1, dtype=np.int64) for n in EXAMPLE_LENGTHS]
    else:
        raise ExportError(f"a {pre.kind} preprocessor has no ONNX export")
    return to_tensors(pre.features(rows))


def _axes(name: str, tensor: torch.Tensor, ragged: bool) -> list[str]:
    """An input's axes: the batch first; for rows of varying length (sequences, texts) the length next."""
    axes = ["batch", *(str(size) for size in tensor.shape[1:])]
    if ragged and tensor.dim() >= 2:
        axes[1] = "length"
    return axes


def _dynamic_shapes(inputs: dict[str, list[str]], max_length: Optional[int]) -> dict[str, dict]:
    batch = torch.export.Dim("batch", min=1)
    length = torch.export.Dim("length", min=1, max=max_length) if max_length else torch.export.Dim("length", min=1)
    named = {"batch": batch, "length": length}
    return {name: {i: named[axis] for i, axis in enumerate(axes) if axis in named} for name, axes in inputs.items()}


def _exportable(path: str) -> tuple[torch.nn.Module, Any, dict, str]:
    model, pre, meta = checkpoint.load_model(path)
    task = models.task_name(meta)
    if task not in OUTPUTS:
        raise ExportError(f"{path}: the {task} task has no ONNX export: a language model generates text by "
                          "sampling one character at a time in Python; export covers classifiers, embedders "
                          "and GAN generators")
    form = models.FAMILIES[meta["family"]].for_export
    try:
        model = form(model.eval()) if form else model.eval()
    except ValueError as exc:
        raise ExportError(f"{path}: {exc}") from None
    return model.eval(), pre, meta, task


def export(checkpoint_path: str, output: str, quantize: Optional[str] = None) -> Exported:
    """Write ``checkpoint_path``'s model to ``output`` (a local path or URI) as ONNX; ``quantize``
    "int8": weights quantized dynamically by onnxruntime (activations stay float)."""
    model_bytes, exported = build(checkpoint_path, quantize)
    write_bytes(output, model_bytes)
    exported.path = output
    return exported


def build(checkpoint_path: str, quantize: Optional[str] = None) -> tuple[bytes, Exported]:
    """The ONNX file's bytes, checked in onnxruntime against torch (what ``export`` writes; the
    onnx backend of scoring and serving loads them without a file)."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ExportError(f"ONNX export needs onnx and onnxruntime (pip install distdl[{ONNX_EXTRA}]): "
                          f"{exc}") from None
    if quantize is not None and quantize not in QUANTIZE:
        raise ExportError(f"--quantize: one of {', '.join(QUANTIZE)}, got {quantize!r}")
    model, pre, meta, task = _exportable(checkpoint_path)
    examples = example_inputs(model, pre, task)
    ragged = getattr(pre, "kind", None) in ("sequence", "text") and task != "image_generation"
    inputs = {name: _axes(name, tensor, ragged) for name, tensor in examples.items()}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp, "model.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on its own internals
            torch.onnx.export(model, (), kwargs=examples, f=str(fp32), input_names=list(examples),
                              output_names=[OUTPUTS[task]], dynamo=True, external_data=False, verbose=False,
                              dynamic_shapes=_dynamic_shapes(inputs, getattr(pre, "max_length", None) if ragged
                                                             else None))
        graph = onnx.load(str(fp32))
        props = {"distdl.family": meta["family"], "distdl.task": task, "distdl.inputs": json.dumps(inputs),
                 "distdl.checkpoint_identity": checkpoint.identity(checkpoint_path)}
        for key, value in props.items():
            graph.metadata_props.add(key=key, value=value)
        onnx.save(graph, str(fp32))
        final = fp32
        if quantize:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            final = Path(tmp, "model.int8.onnx")
            # It logs advice to pre-process the model first (symbolic shape inference), which fails
            # on torch.export's BERT graphs; dynamic quantization does not need it.
            logging.disable(logging.WARNING)
            try:
                quantize_dynamic(str(fp32), str(final), weight_type=QuantType.QInt8)
            finally:
                logging.disable(logging.NOTSET)
        model_bytes = final.read_bytes()
    session = onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return model_bytes, Exported("", inputs, OUTPUTS[task], _max_abs_diff(model, session, examples), quantize)


def _max_abs_diff(model: torch.nn.Module, session: Any, examples: dict[str, torch.Tensor]) -> float:
    with torch.inference_mode():
        expected = model(**examples).float().numpy()
    got = session.run(None, {name: tensor.numpy() for name, tensor in examples.items()})[0]
    return float(np.abs(expected - got).max())
