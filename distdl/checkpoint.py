"""The only module that knows checkpoint file names.

A checkpoint is a folder (local or URI) holding nothing that needs unpickling:

    model.safetensors      weights
    model.json             {"family", "args"}: enough to rebuild the nn.Module
    preprocessor.json      the fitted Preprocessor
    spec.yaml              the resolved job spec that produced it
    train_state.json       epoch, metric history, best so far, optimizer hyper-parameters
    optimizer.safetensors  optimizer tensors (moments, steps) under "<optimizer name>/", for exact resume
    COMPLETE               written last; a folder without it is ignored

A run folder ``<storage>/<name>`` holds ``checkpoints/epoch_NNNN`` (the newest ``keep``),
``best/`` (a copy of the best by the chosen metric; on local disk a symlink to a hidden
``.best-<id>/``, swapped atomically: see copy) and ``metrics.jsonl``.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pyarrow.fs
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from distdl import models, preprocessors
from distdl.paths import exists, filesystem, join, read_bytes

MARKER = "COMPLETE"
CHECKPOINTS = "checkpoints"
BEST = "best"
METRICS = "metrics.jsonl"
SPEC = "spec.yaml"


class CheckpointError(ValueError):
    """A checkpoint file that exists but cannot be read (truncated by a failed copy, corrupt)."""


def epoch_dir(run_dir: str, epoch: int) -> str:
    return join(run_dir, CHECKPOINTS, f"epoch_{epoch:04d}")


def best_dir(run_dir: str) -> str:
    return join(run_dir, BEST)


# ---- writing (rank 0) --------------------------------------------------------------------
def _flatten_optimizer(state: dict, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Split torch optimizer state into tensors (safetensors, keys under ``prefix``) and plain values (JSON)."""
    tensors, scalars = {}, {}
    for pid, per_param in state["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}/{pid}/{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}/{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict, prefix: str) -> dict:
    state: dict[int, dict[str, Any]] = {}
    mine = [(k[len(prefix) + 1:], v) for k, v in tensors.items() if k.startswith(prefix + "/")]
    for key, value in [*mine, *meta["scalars"].items()]:
        pid, name = key.split("/", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save(dest: str, model: nn.Module, family: str, model_cfg: Any, preprocessor: Any, spec: dict,
         train_state: dict, optimizers: dict[str, torch.optim.Optimizer] | None = None) -> str:
    """Write a complete checkpoint to ``dest`` (replacing any there); the marker goes last.
    ``optimizers`` are named: {"model": ...} for one, {"generator": ..., "discriminator": ...} for a gan."""
    fs, inner = filesystem(dest)
    with tempfile.TemporaryDirectory(prefix="distdl-ckpt-") as tmp:
        local = Path(tmp)
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, local / "model.safetensors")
        (local / "model.json").write_text(json.dumps({"family": family, "args": models.config_args(model_cfg)}, indent=2))
        (local / "preprocessor.json").write_text(preprocessor.to_json())
        (local / SPEC).write_text(yaml.safe_dump(spec, sort_keys=False))
        state = dict(train_state)
        if optimizers:
            tensors, state["optimizers"] = {}, {}
            for name, optimizer in optimizers.items():
                named, state["optimizers"][name] = _flatten_optimizer(optimizer.state_dict(), name)
                tensors.update(named)
            save_file(tensors, local / "optimizer.safetensors")
        (local / "train_state.json").write_text(json.dumps(state, indent=2))
        fs.delete_dir_contents(inner, missing_dir_ok=True)
        fs.create_dir(inner, recursive=True)
        pyarrow.fs.copy_files(tmp, inner, destination_filesystem=fs)
    with fs.open_output_stream(join(inner, MARKER)) as f:
        f.write(b"ok\n")
    return dest


def prune(run_dir: str, keep: int) -> None:
    """Delete all but the newest ``keep`` complete epoch checkpoints. Incomplete folders (a
    write cut short) are left alone: they are ignored, and overwritten if their epoch re-runs."""
    fs, _ = filesystem(run_dir)
    for path in list_checkpoints(run_dir)[:-keep]:
        fs.delete_dir(filesystem(path)[1])


def copy(src: str, dest: str) -> None:
    """Copy a complete checkpoint folder to ``dest`` (``best/``), replacing what is there so that a
    reader (a replica restarting while training improves best/) never loads a half-written folder.

    Local disk and file:// URIs: ``dest`` is a relative symlink to a hidden sibling folder that is
    written in full first, then swapped in with one os.replace; the reader sees the old or the new
    checkpoint, never neither. Object stores (s3://, gs://) cannot rename: ``dest`` is rewritten in
    place with its marker removed first and copied last, so a reader meanwhile finds no complete
    checkpoint (a clear error) rather than a half-written one that claims to be complete."""
    dest_fs, dest_inner = filesystem(dest)
    if isinstance(dest_fs, pyarrow.fs.LocalFileSystem):
        _swap_in(src, Path(dest_inner))
        return
    if dest_fs.get_file_info(join(dest_inner, MARKER)).type == pyarrow.fs.FileType.File:
        dest_fs.delete_file(join(dest_inner, MARKER))
    _copy_files(src, dest_fs, dest_inner)


def _copy_files(src: str, dest_fs: pyarrow.fs.FileSystem, dest_inner: str) -> None:
    """Fill ``dest_inner`` with the files of checkpoint ``src``; the marker is copied last."""
    src_fs, src_inner = filesystem(src)
    dest_fs.delete_dir_contents(dest_inner, missing_dir_ok=True)
    dest_fs.create_dir(dest_inner, recursive=True)
    for info in src_fs.get_file_info(pyarrow.fs.FileSelector(src_inner)):
        if info.base_name != MARKER:
            pyarrow.fs.copy_files(info.path, join(dest_inner, info.base_name), src_fs, dest_fs)
    pyarrow.fs.copy_files(join(src_inner, MARKER), join(dest_inner, MARKER), src_fs, dest_fs)


def _swap_in(src: str, dest: Path) -> None:
    """Write ``src`` to ``.<dest>-<id>/`` beside ``dest``, then point the symlink ``dest`` at it."""
    target = dest.with_name(f".{dest.name}-{uuid.uuid4().hex[:12]}")
    _copy_files(src, pyarrow.fs.LocalFileSystem(), str(target))
    link = target.with_name(target.name + ".link")
    link.symlink_to(target.name)  # relative: the run folder may be mounted at another path elsewhere
    if dest.is_dir() and not dest.is_symlink():  # a plain folder (older distdl): moved aside, once
        dest.rename(dest.with_name(f".{dest.name}-{uuid.uuid4().hex[:12]}"))
    os.replace(link, dest)  # atomic on POSIX: dest names the old complete folder, then the new one
    # The folder replaced, and any left by a copy that crashed before its swap.
    stale = re.compile(rf"\.{re.escape(dest.name)}-[0-9a-f]{{12}}(\.link)?")
    for path in dest.parent.iterdir():
        if path == target or not stale.fullmatch(path.name):
            continue
        if path.is_symlink():
            path.unlink()
        else:
            shutil.rmtree(path)


# ---- finding -----------------------------------------------------------------------------
def is_complete(path: str) -> bool:
    fs, inner = filesystem(path)
    return fs.get_file_info(join(inner, MARKER)).type == pyarrow.fs.FileType.File


def list_checkpoints(run_dir: str) -> list[str]:
    """Complete epoch checkpoints of a run, oldest first."""
    fs, inner = filesystem(run_dir)
    root = join(inner, CHECKPOINTS)
    if fs.get_file_info(root).type != pyarrow.fs.FileType.Directory:
        return []
    found = sorted(i.base_name for i in fs.get_file_info(pyarrow.fs.FileSelector(root))
                   if i.type == pyarrow.fs.FileType.Directory and i.base_name.startswith("epoch_"))
    return [p for p in (join(run_dir, CHECKPOINTS, name) for name in found) if is_complete(p)]


def latest(run_dir: str) -> str | None:
    """The newest complete checkpoint in storage; the resume point even when Ray's own
    checkpoint registry missed the last report (see DESIGN.md)."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


# ---- reading -----------------------------------------------------------------------------
def _read_text(path: str, name: str) -> str:
    return read_bytes(join(path, name)).decode()


def _read_tensors(path: str, name: str) -> dict[str, torch.Tensor]:
    fs, inner = filesystem(path)
    try:
        if isinstance(fs, pyarrow.fs.LocalFileSystem):
            return load_file(join(inner, name))
        with tempfile.TemporaryDirectory() as tmp:
            pyarrow.fs.copy_files(join(inner, name), join(tmp, name), source_filesystem=fs)
            return load_file(join(tmp, name))
    except SafetensorError as exc:  # read where the model loads (a scoring actor, a replica): name the file
        raise CheckpointError(f"{join(path, name)} is not a readable safetensors file (truncated or corrupt?): "
                              f"{exc}") from exc


def _require_complete(path: str) -> None:
    if not is_complete(path):
        hint = f"; did you mean {best_dir(path)}?" if is_complete(best_dir(path)) else ""  # a run folder
        raise FileNotFoundError(f"{path} is not a complete distdl checkpoint (no {MARKER} marker){hint}")


def load_model(path: str) -> tuple[nn.Module, Any, dict]:
    """(model in eval mode on CPU, preprocessor, model.json) from a checkpoint folder."""
    meta = load_meta(path)
    return load_module(path, meta), load_preprocessor(path), meta


def load_module(path: str, meta: dict) -> nn.Module:
    """The checkpoint's model in eval mode on CPU, built from its model.json ``meta`` (already read)."""
    model = models.build_model(meta["family"], models.config_from_args(meta["family"], meta["args"]))
    model.load_state_dict(_read_tensors(path, "model.safetensors"))
    return model.eval()


def load_meta(path: str) -> dict:
    """model.json: {"family", "args"}."""
    _require_complete(path)
    return json.loads(_read_text(path, "model.json"))


def load_preprocessor(path: str) -> Any:
    return preprocessors.from_json(_read_text(path, "preprocessor.json"))


def load_weights(path: str) -> dict[str, torch.Tensor]:
    return _read_tensors(path, "model.safetensors")


def load_train_state(path: str) -> tuple[dict, dict[str, dict] | None]:
    """(train_state.json, {optimizer name: state_dict} or None) for resuming."""
    _require_complete(path)
    state = json.loads(_read_text(path, "train_state.json"))
    metas = state.pop("optimizers", None)
    if not metas:
        return state, None
    tensors = _read_tensors(path, "optimizer.safetensors")
    return state, {name: _unflatten_optimizer(tensors, meta, name) for name, meta in metas.items()}


def identity(path: str) -> str:
    """A hash of everything that decides a checkpoint's outputs: the weights, model.json (the
    architecture and flags such as an embedder's normalize) and the preprocessor. Equal iff two
    checkpoints score alike. Each file is framed by its name and length, so no two different
    sets of files hash the same by shifting bytes from one file into the next."""
    digest = hashlib.sha256()
    for name in ("model.safetensors", "model.json", "preprocessor.json"):
        content = read_bytes(join(path, name))
        digest.update(f"{name}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()


def load_spec(path: str) -> dict:
    _require_complete(path)
    return yaml.safe_load(_read_text(path, SPEC))


def read_metrics(run_dir: str) -> list[dict]:
    """metrics.jsonl's rows, one per epoch; [] before the first. Rank 0 rewrites the file every
    epoch, so a reader polling it may meet a line being written: that line is skipped."""
    path = join(run_dir, METRICS)
    if not exists(path):
        return []
    rows = []
    for line in read_bytes(path).decode().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The numbers of an epoch's metrics row, without detail such as a confusion matrix or the
    per-class table: what the console line, ray.train.report, MLflow and the run listing show."""
    return {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def write_metrics(run_dir: str, history: list[dict]) -> None:
    """Rewrite metrics.jsonl from the checkpointed history, so a restart never duplicates lines."""
    fs, inner = filesystem(run_dir)
    fs.create_dir(inner, recursive=True)
    with fs.open_output_stream(join(inner, METRICS)) as f:
        f.write("".join(json.dumps(row) + "\n" for row in history).encode())
