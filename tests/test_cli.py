"""The command line: help, and validation before Ray starts."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from distdl import cli
from test_predict import tiny_checkpoint


def distdl(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distdl", *args], capture_output=True, text=True, timeout=timeout)


def test_help_explains_each_command(capsys):
    for command in ("train", "validate", "demo-data"):
        try:
            cli.main([command, "--help"])
        except SystemExit as exit:
            assert exit.code == 0
    out = capsys.readouterr().out
    assert "--set FIELD=VALUE" in out and "--address" in out and "resumes the run" in out


def test_help_and_a_mistyped_flag_answer_without_importing_torch_or_ray():
    """Both took ~5 s when the CLI imported the job spec (and through it torch and Ray Data) first."""
    code = ("import sys; from distdl import cli\n"
            "for argv in (['--help'], ['score', '--help'], ['score', '--checkpint', 'x']):\n"
            "    try: cli.main(argv)\n"
            "    except SystemExit: pass\n"
            "print(sorted(m for m in ('torch', 'ray', 'ray.data') if m in sys.modules), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "distdl score: error: the following arguments are required: --checkpoint" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "[]"


def test_validate_reports_every_bad_field_without_starting_ray(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "data": {"trian": "a.parquet"}, "train": {"lr": "fast"}}))
    result = distdl("validate", str(bad))  # its own process: whether it starts Ray shows in its output
    assert result.returncode == 2 and "Started a local Ray instance" not in result.stderr
    assert "data.trian: unknown key; did you mean 'train'?" in result.stderr
    assert "train.lr: must be float, got 'fast'" in result.stderr
    assert "data.train: is required" in result.stderr


def test_validate_prints_the_resolved_spec(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"name": "x", "data": {"train": "a.parquet"}}))
    assert cli.main(["validate", str(good), "--set", "train.epochs=3", "--print"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["epochs"] == 3 and printed["scaling"]["num_workers"] == "auto"


def test_bad_score_settings_fail_before_ray_starts(ray_session, digits, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt", digits["train"])
    result = distdl("score", "--checkpoint", ckpt, "--input", str(digits["holdout"]), "--output", str(tmp_path / "out"),
                    "--gpus", "-1", "--verbose")  # Ray's start-up line would show
    assert result.returncode == 2 and "Started a local Ray instance" not in result.stderr
    assert result.stderr.strip().splitlines()[-2:] == ["error: invalid score settings:", "  --gpus: must be >= 0, got -1.0"]
    assert not (tmp_path / "out").exists()


def test_bad_prediction_options_fail_before_ray_starts(ray_session, digits, tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "ckpt", digits["train"])
    common = ["score", "--checkpoint", ckpt, "--input", str(digits["holdout"]), "--output", str(tmp_path / "out")]
    for flag, value, reason in (("--top-k", "0", "must be >= 1, got 0"), ("--temperature", "nan", "must be >= 0.0, got nan"),
                                ("--seed", "x", "invalid int value: 'x'")):
        with pytest.raises(SystemExit) as exit:
            cli.main([*common, flag, value])
        assert exit.value.code == 2 and f"argument {flag}: {reason}" in capsys.readouterr().err
    result = distdl(*common, "--max-new-tokens", "5", "--verbose")  # an option a classifier does not take
    assert result.returncode == 1 and "Started a local Ray instance" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: option(s) ['max_new_tokens'] do not apply to a classification model; it takes ['top_k']")
    assert not (tmp_path / "out").exists()


def test_storage_that_cannot_hold_the_run_is_a_one_line_error_before_ray_starts(digits, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    storage = tmp_path / "a_file" / "runs"
    result = distdl("train", "jobs/cnn_digits.yaml", "--set", f"storage={storage}", "--set", f"data.train={digits['train']}",
                    "--verbose")
    assert result.returncode == 1 and "Started a local Ray instance" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: storage {storage}: cannot create the run folder {storage / 'cnn_digits'}: ")


def test_a_missing_data_file_is_a_one_line_error(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump({"name": "x", "storage": str(tmp_path), "data": {"train": str(tmp_path / "none.parquet")}}))
    result = distdl("train", str(spec))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"error: data path not found: {tmp_path / 'none.parquet'}"
