"""Readers, the train/val split and the preprocessor, on real Ray Data."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq
import pytest

from distdl import data
from distdl.preprocessors import BadInputError, image
from distdl.preprocessors.image import ImagePreprocessor, ImagePreprocessSpec

PRE = ImagePreprocessor("image", "label", 8, 1, [0.0], [1.0], list(range(10)))


def tensors(ds, pre=PRE, key="id"):
    """x, y of a preprocessed dataset, ordered by ``key`` (readers do not promise an order)."""
    rows = ds.take_all()
    rows.sort(key=lambda r: r[key])
    batch = {k: np.array([r[k] for r in rows] + [None], dtype=object)[:-1] for k in rows[0]}
    return pre(batch)


@pytest.fixture(scope="module")
def same_rows(tmp_path_factory, digits):
    """The first 60 training digits in every supported layout."""
    root = tmp_path_factory.mktemp("formats")
    table = pq.read_table(digits["train"]).slice(0, 60)
    (root / "png").mkdir()
    paths = []
    for i, (png, label) in enumerate(zip(table["image"].to_pylist(), table["label"].to_pylist())):
        folder = root / "folder" / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:03d}.png").write_bytes(png)
        paths.append(str(folder / f"{i:03d}.png"))
    by_path = pa.table({"id": pa.array(range(60)), "image": paths, "label": table["label"]})
    pq.write_table(table.set_column(0, "id", pa.array(range(60))), root / "bytes.parquet")
    pq.write_table(by_path, root / "paths.parquet")
    pyarrow.csv.write_csv(by_path, root / "paths.csv")
    with open(root / "paths.jsonl", "w") as f:
        for row in by_path.to_pylist():
            f.write(json.dumps(row) + "\n")
    from PIL import Image
    import io
    with open(root / "pixels.jsonl", "w") as f:
        for i, image in enumerate(table["image"].to_pylist()):
            pixels = np.asarray(Image.open(io.BytesIO(image))).tolist()  # nested 8x8 lists of 0..255
            f.write(json.dumps({"id": i, "image": pixels, "label": table["label"][i].as_py()}) + "\n")
    return root


@pytest.mark.parametrize("name", ["bytes.parquet", "paths.parquet", "paths.csv", "paths.jsonl", "pixels.jsonl"])
def test_every_format_yields_the_same_rows(ray_session, same_rows, name):
    expected = tensors(data.read(str(same_rows / "bytes.parquet")))
    got = tensors(data.read(str(same_rows / name)))
    np.testing.assert_array_equal(got["y"], expected["y"])
    np.testing.assert_allclose(got["x"], expected["x"], atol=1e-6)


def test_image_folder_yields_the_same_rows_with_labels_from_folder_names(ray_session, same_rows):
    pre = ImagePreprocessor("image", "label", 8, 1, [0.0], [1.0], [str(i) for i in range(10)])
    got = tensors(data.read(str(same_rows / "folder")), pre, key="path")
    expected = tensors(data.read(str(same_rows / "bytes.parquet")))
    order = np.argsort([int(p.rsplit("/", 1)[1][:3]) for p in sorted(r["path"] for r in data.read(str(same_rows / "folder")).take_all())])
    np.testing.assert_array_equal(got["y"][order], expected["y"])
    np.testing.assert_allclose(got["x"][order], expected["x"], atol=1e-6)


def test_formats_are_inferred_from_extension_or_folder_content(same_rows):
    assert data.infer_format(str(same_rows / "paths.csv")) == "csv"
    assert data.infer_format(str(same_rows / "folder")) == "image_folder"
    with pytest.raises(data.DataError, match="not found"):
        data.infer_format(str(same_rows / "nope.parquet"))


def test_a_format_that_cannot_be_inferred_says_which_setting_names_it(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataError, match=r"^data folder .*/empty holds no data files$"):
        data.infer_format(str(tmp_path / "empty"))
    (tmp_path / "rows.tsv").write_text("a\tb\n")
    with pytest.raises(data.DataError, match=r"from '\.tsv'; set data\.format \(training\) or --format \(distdl score\)$"):
        data.infer_format(str(tmp_path / "rows.tsv"))


def test_text_reader_gives_one_row_per_line(ray_session, tmp_path):
    (tmp_path / "a.txt").write_text("first line\nsecond line\n")
    assert [r["text"] for r in data.read(str(tmp_path / "a.txt")).take_all()] == ["first line", "second line"]


def test_one_large_parquet_file_is_read_as_several_blocks(ray_session, tmp_path):
    """Blocks are what Ray Data spreads over tasks and scoring actors: a single large file read
    as one block (Ray 2.60's default V2 reader) would be scored by one actor of the pool."""
    rows = 4000
    pq.write_table(pa.table({"id": np.arange(rows), "image": [bytes(1024)] * rows}), tmp_path / "one.parquet")
    ds = data.read(str(tmp_path / "one.parquet")).materialize()
    assert ds.num_blocks() > 1 and ds.count() == rows


def block_rows(ds) -> list[int]:
    return [bundle.num_rows() for bundle in ds.iter_internal_ref_bundles()]


def test_a_scoring_read_cuts_known_rows_into_blocks_of_at_most_max_rows(ray_session, tmp_path):
    """Scoring's blocks are actor tasks and output parts: few enough that a task's fixed cost
    stays small next to its rows, enough that every actor of the pool has work."""
    pq.write_table(pa.table({"id": np.arange(4000), "text": ["a short sentence"] * 4000}), tmp_path / "one.parquet")
    assert block_rows(data.read(str(tmp_path / "one.parquet"), blocks=data.BlockTarget(2, 1000))) == [1000] * 4
    assert block_rows(data.read(str(tmp_path / "one.parquet"), blocks=data.BlockTarget(20, 4000))) == [200] * 20


def test_a_scoring_read_keeps_files_apart_and_cuts_folders_by_files(ray_session, tmp_path, same_rows):
    for i in range(3):
        pq.write_table(pa.table({"id": np.arange(10) + 10 * i}), tmp_path / f"part{i}.parquet")
    assert sorted(block_rows(data.read(str(tmp_path), blocks=data.BlockTarget(1, 1000)))) == [10, 10, 10]
    assert block_rows(data.read(str(same_rows / "folder"), blocks=data.BlockTarget(1, 25))) == [20, 20, 20]


def test_a_corrupt_image_names_its_file(ray_session, tmp_path, digits):
    for label in ("0", "1"):
        (tmp_path / label).mkdir()
    (tmp_path / "0" / "good.png").write_bytes(pq.read_table(digits["train"])["image"][0].as_py())
    (tmp_path / "1" / "broken.png").write_bytes(b"\x89PNG not really")
    pre = ImagePreprocessor("image", "label", 8, 1, [0.0], [1.0], ["0", "1"])
    with pytest.raises(Exception, match=r"cannot decode image in column 'image' \(file .*1/broken.png\)"):
        data.read(str(tmp_path)).map_batches(pre, batch_format="numpy").take_all()


def test_an_unreadable_data_file_names_the_file(ray_session, tmp_path):
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"this is not parquet")
    with pytest.raises(Exception, match="broken.parquet"):
        data.read(str(bad)).take_all()


def test_split_is_disjoint_complete_and_stable(ray_session, digits):
    ds = data.read(str(digits["train"]))
    train, val = data.split(ds, 0.2, seed=0, key_column="id")
    train_ids = {r["id"] for r in train.take_all()}
    val_ids = {r["id"] for r in val.take_all()}
    assert not train_ids & val_ids
    assert len(train_ids | val_ids) == ds.count()
    assert 0.15 < len(val_ids) / ds.count() < 0.25
    assert {r["id"] for r in data.split(ds, 0.2, seed=0, key_column="id")[1].take_all()} == val_ids


def test_fit_finds_classes_and_normalizes(ray_session, digits):
    pre = image.fit(data.read(str(digits["train"])), "image", "label", ImagePreprocessSpec(image_size=16, channels=1, fit_rows=512))
    assert pre.classes == list(range(10))
    x = pre(data.read(str(digits["train"])).take_batch(256))["x"]
    assert x.shape == (256, 1, 16, 16)
    assert abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1) < 0.1


def test_fit_refuses_a_single_class_and_missing_columns(ray_session, tmp_path):
    pq.write_table(pa.table({"image": [[0] * 64] * 4, "label": [1] * 4}), tmp_path / "one.parquet")
    ds = data.read(str(tmp_path / "one.parquet"))
    with pytest.raises(BadInputError, match="at least 2"):
        image.fit(ds, "image", "label", ImagePreprocessSpec(image_size=8, channels=1, fit_rows=10))
    with pytest.raises(BadInputError, match="label column 'target' not in the data"):
        image.fit(ds, "image", "target", ImagePreprocessSpec(image_size=8, channels=1, fit_rows=10))


def test_unknown_label_and_bad_pixels_are_named():
    with pytest.raises(BadInputError, match="label 11"):
        PRE({"image": np.array([np.zeros(64)]), "label": np.array([11])})
    with pytest.raises(BadInputError, match="NaN"):
        PRE({"image": np.array([np.full(64, np.nan)])})
    with pytest.raises(BadInputError, match=r"shape \(5,\)"):
        PRE({"image": np.array([np.zeros(5)])})


def column(rows: list) -> np.ndarray:
    """rows as Ray Data hands a list column to a batch: an object array of per-row arrays."""
    out = np.empty(len(rows), dtype=object)
    out[:] = rows
    return out


@pytest.mark.parametrize("channels, shape, dtype", [(3, (192,), np.uint8), (3, (8, 8, 3), np.int64),
                                                    (1, (8, 8), np.uint8), (1, (64,), np.float32)])
def test_a_column_of_same_size_pixel_arrays_is_preprocessed_at_once_to_what_each_row_gives(channels, shape, dtype):
    pre = ImagePreprocessor("image", "label", 8, channels, [0.4] * channels, [0.3] * channels, [])
    rng = np.random.default_rng(0)
    rows = [(rng.random(shape) if dtype == np.float32 else rng.integers(0, 256, shape)).astype(dtype) for _ in range(5)]
    row_by_row = pre.features([pre.decode(r) for r in rows])["x"]
    for values in (column(rows), np.stack(rows)):  # a list column, or one numeric array
        at_once = pre.features_at_once(values)
        assert at_once is not None and at_once["x"].shape == (5, channels, 8, 8)
        np.testing.assert_array_equal(at_once["x"], row_by_row)  # the same float32 operations, bit for bit


def test_a_column_with_any_row_that_needs_decoding_goes_row_by_row_and_names_the_bad_row():
    good = np.zeros(64, dtype=np.uint8)
    for rows in ([good, image.png_bytes(np.zeros((8, 8), dtype=np.uint8))],  # encoded bytes
                 [good, np.zeros((8, 8), dtype=np.uint8)],  # another shape
                 [good, good.astype(np.int64)],  # another dtype
                 [np.zeros((16, 16), dtype=np.uint8)] * 2):  # needs resizing
        assert PRE.features_at_once(column(rows)) is None
        assert PRE({"image": column(rows)})["x"].shape == (2, 1, 8, 8)
    with_nan = column([np.zeros(64, dtype=np.float32), np.full(64, np.nan, dtype=np.float32)])
    assert PRE.features_at_once(with_nan) is None
    with pytest.raises(BadInputError, match=r"\(row 1 of its batch\): pixel array holds NaN"):
        PRE({"image": with_nan})


def test_augment_changes_pixels_but_not_shape_or_labels():
    batch = {"x": np.random.default_rng(0).random((8, 1, 16, 16), dtype=np.float32), "y": np.arange(8)}
    out = image.Augment(["random_crop", "hflip"])(batch)
    assert out["x"].shape == batch["x"].shape and (out["y"] == batch["y"]).all()
    assert not np.array_equal(out["x"], batch["x"])
