"""What a scoring run finds in its output folder: start afresh, resume, or refuse.

The manifest (score_output) says which checkpoint, options and input the rows already there
were scored with. The same ones resume (or, complete, need nothing); an input that only grew
resumes, scoring its new rows; anything else would mix two kinds of rows in one output and
is refused unless --overwrite, which clears the folder.
"""
from __future__ import annotations

import pyarrow.fs

from distdl import score_input, score_lock, score_output
from distdl.logs import say
from distdl.paths import filesystem


def make_folder(output_path: str) -> None:
    """Create the output folder, refusing a file there."""
    fs, inner = filesystem(output_path)
    if fs.get_file_info(inner).type == pyarrow.fs.FileType.File:
        raise ValueError(f"--output {output_path} is a file; give a folder (it will hold parquet parts)")
    try:
        fs.create_dir(inner, recursive=True)
    except OSError as exc:
        raise ValueError(f"--output {output_path}: cannot create it: {exc}") from exc


def prepare(output_path: str, manifest: dict, overwrite: bool, resumable: bool) -> score_output.IdSet | None:
    """Ids already committed in the output (None when it is complete), after refusing a mismatch.
    The caller holds the output's lock."""
    old = score_output.read_manifest(output_path)
    if old and not overwrite:
        change = _refuse_another_source(output_path, old, manifest)
        if change is score_input.Change.SAME and old["complete"]:
            return None
        if not resumable:
            raise ValueError(f"{output_path} already holds scores and the input has no id column to resume "
                             "by (pass --id-column); use --overwrite to score everything again")
        if change is score_input.Change.GROWN:
            say(f"[distdl] the input grew since {output_path} was scored: scoring the new rows")
        score_output.remove_partial(output_path)
        score_output.write_manifest(output_path, manifest)  # the input as it is now; not complete
        return score_output.committed_ids(output_path, manifest["id_column"])
    fs, inner = filesystem(output_path)
    if old is None and not overwrite and any(i.base_name != score_lock.LOCK
                                             for i in fs.get_file_info(pyarrow.fs.FileSelector(inner))):
        raise ValueError(f"{output_path} is not empty and was not written by distdl score; "
                         "use --overwrite to replace it")
    score_output.clear(output_path)
    score_output.write_manifest(output_path, manifest)
    return score_output.IdSet([])


def _refuse_another_source(output_path: str, old: dict, manifest: dict) -> score_input.Change:
    """Refuse an output scored by another checkpoint, with other options, or from an input that
    changed other than by growing: its rows would be mixed with rows scored now. The input's
    change otherwise (same or grown)."""
    if old["identity"] != manifest["identity"]:
        raise ValueError(f"{output_path} holds scores of another checkpoint ({old['checkpoint']}); "
                         "use --overwrite to replace them, or another --output")
    if old.get("options", {}) != manifest["options"]:
        raise ValueError(f"{output_path} holds scores made with other options ({old.get('options', {})}, "
                         f"now {manifest['options']}); use --overwrite to replace them, or another --output")
    change, how = score_input.compare(old.get("input"), manifest["input"])
    if change is score_input.Change.CHANGED:
        raise ValueError(f"{output_path} was scored from another input ({how}); use --overwrite to score it "
                         "again, or another --output")
    return change
