"""distdl score on the session's real local Ray: nothing lost, bad rows kept, parity, refusal."""
from __future__ import annotations

import os
import shutil
from collections import defaultdict

import hooks
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from test_predict import holdout_batch, tiny_checkpoint

from distdl import cli, data, score, score_output
from distdl.predict import Predictor
from distdl.specbase import SpecError

SMALL = score.Resources(batch_size=32, max_actors=2)
ray.cloudpickle.register_pickle_by_value(hooks)  # actors cannot import the tests folder


@pytest.fixture(scope="module")
def ckpt(ray_session, digits, tmp_path_factory) -> str:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "best", digits["train"])


@pytest.fixture(scope="module")
def with_bad_image(digits, tmp_path_factory):
    table = pq.read_table(digits["holdout"])
    images = table["image"].to_pylist()
    images[3] = b"not an image"
    path = tmp_path_factory.mktemp("input") / "holdout.parquet"
    pq.write_table(table.set_column(1, "image", pa.array(images, pa.binary())), path)
    return path, table["id"][3].as_py()


def rows_by_id(output) -> dict:
    rows = pq.read_table(output).to_pylist()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "a row was written twice"
    return {r["id"]: r for r in rows}


def test_every_row_comes_out_once_and_bad_rows_carry_an_error(ckpt, digits, with_bad_image, tmp_path):
    path, bad_id = with_bad_image
    summary = score.score(ckpt, str(path), str(tmp_path / "out"), SMALL)
    rows = rows_by_id(tmp_path / "out")
    assert set(rows) == set(pq.read_table(path)["id"].to_pylist())
    assert "cannot decode image" in rows[bad_id]["error"] and rows[bad_id]["label"] is None
    assert (summary.rows_in, summary.rows_scored, summary.rows_with_errors) == (len(rows), len(rows) - 1, 1)
    assert summary.describe().splitlines()[:3] == [
        f"rows in: {len(rows)}  rows scored: {len(rows) - 1}  rows with errors: 1  ({len(rows)} this run, "
        f"{len(rows) / summary.seconds:,.0f} rows/s)",
        f"  e.g. {rows[bad_id]['error']}", "  (each row's reason is in the output's error column)"]
    # The pool, as Ray's state API saw it: found under `make test` too, where each pytest worker
    # runs a Ray of its own on the same machine.
    assert summary.actors and set(summary.actors) == {ray.get_runtime_context().get_node_id()}, summary.actors


def test_predictions_keep_their_types_in_a_part_whose_rows_all_failed(ckpt, digits, tmp_path):
    """A part of failed rows holds only nulls, yet must type them like any other part: one part
    typed null next to one typed int64 makes the output folder unreadable as one table."""
    bad_ids = list(range(40))
    pq.write_table(pa.table({"id": bad_ids, "image": [b"not an image"] * 40}), tmp_path / "bad.parquet")
    score.score(ckpt, str(tmp_path / "bad.parquet"), str(tmp_path / "out"), SMALL)
    for part in (tmp_path / "out").glob("part-*.parquet"):
        schema = pq.read_schema(part)
        assert schema.field("label").type == pa.int64() and schema.field("error").type == pa.string()
        assert schema.field("top_probabilities").type == pa.list_(pa.float64())
    rows = rows_by_id(tmp_path / "out")
    assert sorted(rows) == bad_ids and all(r["label"] is None and r["error"] for r in rows.values())


def test_scores_equal_the_predictor_called_directly(ckpt, digits, tmp_path):
    score.score(ckpt, str(digits["holdout"]), str(tmp_path / "out"), SMALL)
    rows = rows_by_id(tmp_path / "out")
    batch = holdout_batch(digits, 1000)
    direct = Predictor(ckpt)(batch)
    for i, row_id in enumerate(batch["id"]):
        assert rows[row_id]["label"] == direct["label"][i]
        assert rows[row_id]["top_labels"] == direct["top_labels"][i]
        np.testing.assert_allclose(rows[row_id]["top_probabilities"], direct["top_probabilities"][i], rtol=1e-5)


def test_the_onnx_backend_scores_as_the_torch_predictor_does(ckpt, digits, tmp_path):
    out = tmp_path / "out"
    assert cli.main(["score", "--checkpoint", ckpt, "--input", str(digits["holdout"]), "--output", str(out),
                     "--backend", "onnx", "--max-actors", "2"]) == 0
    rows = rows_by_id(out)
    batch = holdout_batch(digits, 1000)
    direct = Predictor(ckpt)(batch)
    assert len(rows) == len(batch["id"])
    for i, row_id in enumerate(batch["id"]):
        assert rows[row_id]["label"] == direct["label"][i]
        np.testing.assert_allclose(rows[row_id]["top_probabilities"], direct["top_probabilities"][i], atol=1e-4)


def test_an_actor_runs_one_predictor_call_at_a_time_though_two_blocks_are_in_flight(ckpt, digits, tmp_path,
                                                                                    monkeypatch):
    """score.CALLS_PER_ACTOR lets an actor fetch and slice its next block during a call; the
    model must still never see two batches at once (one GPU's memory, torch's threads)."""
    monkeypatch.setattr(score, "Predictor", hooks.CallSpans)
    log = tmp_path / "calls.log"
    score.score(ckpt, str(digits["holdout"]), str(tmp_path / "out"), score.Resources(batch_size=8, max_actors=1),
                options={"call_log": str(log)})
    spans = defaultdict(list)
    for pid, start, end in (line.split() for line in log.read_text().splitlines()):
        spans[pid].append((float(start), float(end)))
    assert sum(len(s) for s in spans.values()) >= 10
    for calls in spans.values():
        calls.sort()
        assert all(later[0] >= earlier[1] for earlier, later in zip(calls, calls[1:]))


def test_rows_without_ids_get_stable_content_ids_and_a_repeated_file_is_not_lost(ckpt, digits, tmp_path):
    """Two copies of one file cut into the same blocks: the same row ids, but both copies' rows
    must come out (a part named by its ids alone once replaced the other copy's part)."""
    images = pq.read_table(digits["holdout"], columns=["image"])
    for copy in ("a", "b"):
        pq.write_table(images, tmp_path / f"{copy}.parquet")
    summary = score.score(ckpt, str(tmp_path), str(tmp_path / "out"), SMALL)
    out = pq.read_table(tmp_path / "out")
    assert summary.rows_in == summary.rows_out == out.num_rows == 2 * images.num_rows
    ids = out[score.ROW_ID].to_pylist()
    assert len(set(ids)) == len(set(images["image"].to_pylist()))  # one id per distinct image, each twice


def test_pixel_arrays_of_wrong_shape_or_nan_are_errors_not_failures(ckpt, tmp_path):
    good = np.random.default_rng(0).random(64).tolist()
    pixels = [good, good[:10], [float("nan")] * 64, good]
    pq.write_table(pa.table({"id": [0, 1, 2, 3], "image": pa.array(pixels, pa.list_(pa.float64()))}),
                   tmp_path / "pixels.parquet")
    summary = score.score(ckpt, str(tmp_path / "pixels.parquet"), str(tmp_path / "out"), SMALL)
    rows = rows_by_id(tmp_path / "out")
    assert "shape" in rows[1]["error"] and "NaN" in rows[2]["error"]
    assert rows[0]["error"] is None and rows[3]["label"] == rows[0]["label"]
    assert (summary.rows_scored, summary.rows_with_errors) == (2, 2)


def test_an_input_without_the_models_column_or_the_id_column_is_refused_before_any_actor_starts(ckpt, digits,
                                                                                              tmp_path):
    table = pq.read_table(digits["holdout"])
    renamed = tmp_path / "renamed.parquet"
    pq.write_table(table.rename_columns(["id", "picture", *table.column_names[2:]]), renamed)
    with pytest.raises(ValueError, match=r"^input column 'image' not in the data; columns: \['id', 'picture'"):
        score.score(ckpt, str(renamed), str(tmp_path / "out"), SMALL)
    with pytest.raises(ValueError, match=r"^--id-column column 'key' not in the data; columns: \['id', 'image'"):
        score.score(ckpt, str(digits["holdout"]), str(tmp_path / "out"), SMALL, id_column="key")
    assert not (tmp_path / "out").exists()  # refused before the output was prepared


def test_an_output_that_is_a_file_is_refused(ckpt, digits, tmp_path):
    (tmp_path / "scores.parquet").write_bytes(b"a file the user meant to keep")
    with pytest.raises(ValueError, match=r"^--output .*scores\.parquet is a file; give a folder"):
        score.score(ckpt, str(digits["holdout"]), str(tmp_path / "scores.parquet"), SMALL)
    assert (tmp_path / "scores.parquet").read_bytes() == b"a file the user meant to keep"


def test_another_checkpoint_is_refused_unless_overwrite(ckpt, digits, tmp_path):
    out = str(tmp_path / "out")
    score.score(ckpt, str(digits["holdout"]), out, SMALL)
    other = tiny_checkpoint(tmp_path / "other", digits["train"], arch="resnet18")
    with pytest.raises(ValueError, match="another checkpoint"):
        score.score(other, str(digits["holdout"]), out, SMALL)
    again = score.score(ckpt, str(digits["holdout"]), out, SMALL)  # same checkpoint: already complete
    assert again.rows_this_run == 0 and again.rows_out == again.rows_in
    replaced = score.score(other, str(digits["holdout"]), out, SMALL, overwrite=True)
    assert replaced.rows_out == replaced.rows_in == len(rows_by_id(out))


@pytest.mark.parametrize("asked, flag", [({"gpus": 1.0}, "--gpus 1 per scoring actor"),
                                         ({"cpus": 1000.0}, "--cpus 1000 per scoring actor")])
def test_actors_no_node_can_hold_are_refused_before_anything_is_written(ckpt, digits, tmp_path, asked, flag):
    """The session's Ray has no GPU and a few CPUs: such a pool would wait forever."""
    with pytest.raises(ValueError, match=flag):
        score.score(ckpt, str(digits["holdout"]), str(tmp_path / "out"), score.Resources(**asked))
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_no_scoring_actor_can_load_fails_with_the_reason_not_a_traceback(ckpt, digits, tmp_path,
                                                                                     capsys):
    """The driver reads only the checkpoint's JSON; the weights load in each actor, where Ray
    would report the failure as an ActorDiedError with the actor's traceback."""
    broken = tmp_path / "broken"
    shutil.copytree(ckpt, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a copy cut short
    assert cli.main(["score", "--checkpoint", str(broken), "--input", str(digits["holdout"]),
                     "--output", str(tmp_path / "out"), "--max-actors", "1"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"error: scoring failed: {weights} is not a readable safetensors file (truncated or corrupt?): ")


def test_pool_settings_come_from_the_checkpoints_score_section_and_flags_override_them(ckpt, digits, tmp_path):
    assert score.resources(ckpt, {}) == score.Resources()  # a spec.yaml without a score section: defaults
    tuned = tiny_checkpoint(tmp_path / "tuned", digits["train"],
                            spec={"name": "d", "score": {"batch_size": 64, "max_actors": 3, "gpus_per_actor": 0.5}})
    assert score.resources(tuned, {}) == score.Resources(batch_size=64, max_actors=3, gpus=0.5)
    assert score.resources(tuned, {"batch_size": 8, "gpus_per_actor": 0.0}) == score.Resources(batch_size=8, max_actors=3)


def test_a_gpu_pool_cuts_its_input_into_blocks_of_more_forward_passes(ray_session):
    """A block's own cost (one actor task, one output part) weighs more beside GPU forward passes."""
    cpu, gpu = (score.Resources(batch_size=100, max_actors=2, gpus=g).blocks() for g in (0.0, 0.5))
    assert cpu == data.BlockTarget(at_least=2 * score.BLOCKS_PER_ACTOR, max_rows=100 * score.BATCHES_PER_BLOCK)
    assert gpu == data.BlockTarget(at_least=2 * score.BLOCKS_PER_ACTOR, max_rows=100 * score.BATCHES_PER_BLOCK_ON_GPU)
    assert gpu.max_rows > cpu.max_rows


def test_a_resumed_run_drops_the_committed_rows_inside_the_scoring_actors(ckpt, digits, capsys):
    """Not as tasks of their own, which wait for a CPU beside the pool and the read: resuming
    a 1M-row job with 363,262 rows left took 170 s that way on 2 cores, 90 s in the actors."""
    raw = data.read(str(digits["holdout"]), blocks=SMALL.blocks())  # one file cut into blocks
    score.scoring_pipeline(ckpt, raw, SMALL, "id", score_output.IdSet([0]), {}).explain()
    physical = capsys.readouterr().out.split("Physical Plan (Optimized)")[1]
    assert "ActorPoolMapOperator[MapBatches(_drop_done)->MapBatches(Predictor)]" in physical


def test_bad_pool_settings_name_the_flag_that_set_them_or_the_spec_field(ckpt, digits, tmp_path):
    tuned = tiny_checkpoint(tmp_path / "tuned", digits["train"], spec={"name": "d", "score": {"rows_per_file": 0}})
    with pytest.raises(SpecError) as info:
        score.resources(tuned, {"cpus_per_actor": 0.0, "max_actors": 0})
    assert dict(info.value.problems) == {"--cpus": "must be > 0, got 0.0",
                                         "--max-actors": "must be >= min_actors (1) or 'auto', got 0",
                                         "score.rows_per_file": "must be >= 1 or 'auto', got 0"}
    assert str(info.value).startswith("invalid score settings:")
    with pytest.raises(FileNotFoundError, match="is not a complete distdl checkpoint"):
        score.resources(str(tmp_path / "none"), {})


def test_a_pool_that_leaves_no_cpu_for_reading_is_refused_before_any_ray_work(ckpt, digits, tmp_path, monkeypatch,
                                                                              capsys):
    """Its actors would hold every CPU, the read tasks would never start, and Ray would only log
    them as backpressured: the job waited forever (measured: --cpus 2 on 2 CPUs)."""
    cpus = ray.cluster_resources()["CPU"]
    with pytest.raises(ValueError, match=rf"^1 scoring actor\(s\) x --cpus {cpus:g} reserve {cpus:g} of the {cpus:g} "
                                         "CPUs .* reading the input needs 1 CPU beside them: the job would wait "
                                         "forever; lower --cpus or --min-actors$"):
        score.score(ckpt, str(digits["holdout"]), str(tmp_path / "out"), score.Resources(cpus=cpus))
    with pytest.raises(ValueError, match=rf"^{int(cpus)} scoring actor\(s\) x --cpus 1 reserve"):
        score.score(ckpt, str(digits["holdout"]), str(tmp_path / "out"),
                    score.Resources(min_actors=int(cpus), max_actors=int(cpus)))
    assert not (tmp_path / "out").exists()
    score.Resources(min_actors=int(cpus) - 1, max_actors=int(cpus)).check_fits()  # one CPU left: fine
    monkeypatch.setattr(score.runtime, "_embedded", False)  # a cluster that may still gain a node: only told
    score.Resources(cpus=cpus).check_fits()
    assert "; reading waits until a node joins (an autoscaler adding one); Ctrl-C stops" in capsys.readouterr().err


def test_scoring_actors_run_openmp_threads_that_sleep_instead_of_spinning(ray_session, monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)

    @ray.remote(num_cpus=0)
    def wait_policy() -> str | None:
        return os.environ.get("OMP_WAIT_POLICY")

    assert ray.get(wait_policy.options(runtime_env=score.actor_runtime_env()).remote()) == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the driver's own setting wins
    assert ray.get(wait_policy.options(runtime_env=score.actor_runtime_env()).remote()) == "ACTIVE"
