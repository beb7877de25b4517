"""`distdl export`: a checkpoint's model as a file other runtimes load (distdl.onnx_export); no Ray."""
from __future__ import annotations

import argparse

from distdl.cli.common import verbose_arg


# distdl.onnx_export's FORMATS and QUANTIZE (tests/test_onnx_export.py checks they agree); not
# imported from there, which would import torch for every `distdl --help`.
FORMATS, QUANTIZE = ("onnx",), ("int8",)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a checkpoint's model as ONNX, for onnxruntime or any ONNX runtime",
                       description="Export the model's forward pass on the tensors the checkpoint's preprocessor "
                       "makes (dynamic batch axis; sequences and texts also a dynamic length axis), then run "
                       "it in onnxruntime on example rows and print its largest difference from torch. "
                       "Classifiers, sentence embedders and GAN generators export; a language model's "
                       "sampling loop does not.")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder or URI, e.g. runs/cnn_digits/best")
    p.add_argument("--output", required=True, help="the file to write, e.g. model.onnx (a local path or URI)")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="onnx (the only format)")
    p.add_argument("--quantize", choices=QUANTIZE, default=None,
                   help="int8: weights quantized dynamically by onnxruntime (smaller, often faster on CPU; "
                   "check the accuracy on your data)")
    verbose_arg(p, hides=False)


def _export(args: argparse.Namespace) -> int:
    from distdl.onnx_export import export

    print(f"exported: {export(args.checkpoint, args.output, args.quantize).describe()}")
    return 0


COMMANDS = {"export": _export}
