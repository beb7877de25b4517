"""distdl submit / distdl jobs on the client side: what a job runs, what it ships, and the
one-line errors for a bad spec, a missing or wrong token, an unreachable cluster, an
unknown job. The token and shipping tests talk to the session's real cluster."""
from __future__ import annotations

import json
import shlex
import zipfile
from pathlib import Path

import pytest
import yaml
from ray._private import ray_constants
from ray._private.runtime_env import packaging
from test_cluster import distdl_main, wait_for

from distdl import cli, submit, upload
from distdl import spec as specmod
from distdl.specbase import SpecError
from ray_cluster import free_ports


@pytest.fixture
def spec_dir(tmp_path, monkeypatch) -> Path:
    """A project folder as the current directory, with jobs/x.yaml using relative paths."""
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "x.yaml").write_text(yaml.safe_dump({
        "name": "x", "data": {"train": "data/train.parquet", "val": "s3://bucket/val.parquet"}}))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_tune_job_carries_its_search_and_a_bad_one_never_leaves_this_machine(spec_dir, capsys):
    from distdl.cli import tune
    from distdl.cli.run import command_parser

    local = command_parser().parse_args(["tune", "jobs/x.yaml", "--search", "train.lr=loguniform:1e-4:1e-1",
                                         "--trials", "4", "--scheduler", "asha", "--fresh"])
    job = submit.spec_job("tune", local.spec, local.overrides, spec_dir, tune.sweep_flags(local))
    assert job.kind == "tune" and job.argv[:2] == ["tune", "jobs/x.yaml"]
    assert job.argv[-7:] == ["--search", "train.lr=loguniform:1e-4:1e-1", "--trials", "4", "--scheduler", "asha",
                             "--fresh"]
    unreachable = "http://127.0.0.1:9"  # never contacted: the search is checked first
    assert cli.main(["submit", "--address", unreachable, "tune", "jobs/x.yaml", "--search", "name=choice:a,b"]) == 2
    assert "--search name: cannot be searched" in capsys.readouterr().err


def test_a_score_job_keeps_a_runs_best_link_as_written_so_it_follows_the_newest_best(spec_dir):
    (spec_dir / "runs" / "x" / ".best-1").mkdir(parents=True)
    (spec_dir / "runs" / "x" / "best").symlink_to(".best-1")  # as checkpoint.copy leaves it
    job = submit.score_job(["--checkpoint", "runs/x/best", "--input", "in.parquet", "--output", "out"])
    assert job.argv[job.argv.index("--checkpoint") + 1] == str(spec_dir / "runs" / "x" / "best")


def test_a_train_job_pins_relative_paths_to_where_this_shell_sees_them(spec_dir):
    job = submit.spec_job("train", "jobs/x.yaml", ["train.epochs=2"], spec_dir, ["--fresh"])
    assert job.argv == ["train", "jobs/x.yaml", "--set", "train.epochs=2",
                        "--set", f"storage={spec_dir / 'runs'}",
                        "--set", f"data.train={spec_dir / 'data' / 'train.parquet'}", "--fresh"]
    assert job.name == "x" and job.kind == "train"
    assert shlex.split(job.entrypoint) == ["python", "-m", "distdl", *job.argv]


def test_an_override_is_pinned_too_and_yaml_lookalike_paths_stay_strings(spec_dir):
    job = submit.spec_job("train", "jobs/x.yaml", ['storage="odd: dir"'], spec_dir)
    assert job.argv[2:6] == ["--set", 'storage="odd: dir"', "--set", f'storage="{spec_dir / "odd: dir"}"']
    assert specmod.apply_overrides({}, job.argv[3:6:2])["storage"] == str(spec_dir / "odd: dir")


def test_a_bad_spec_is_refused_before_the_cluster_is_contacted(spec_dir, capsys):
    unreachable = f"http://127.0.0.1:{free_ports(1)[0]}"
    assert cli.main(["submit", "jobs/x.yaml", "--set", "train.lr=fast", "--address", unreachable]) == 2
    assert "train.lr: must be float, got 'fast'" in capsys.readouterr().err
    with pytest.raises(SpecError):
        submit.spec_job("train", "jobs/x.yaml", ["train.lr=fast"], spec_dir)


def test_the_spec_must_be_inside_the_shipped_working_directory(spec_dir, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    with pytest.raises(submit.JobsError, match="outside the working directory .* pass --working-dir"):
        submit.spec_job("train", "jobs/x.yaml", [], elsewhere)


def test_a_score_job_makes_local_paths_absolute_and_leaves_uris(spec_dir):
    job = submit.score_job(["--checkpoint", "runs/x/best", "--input=s3://b/in.parquet", "--output", "out/s",
                            "--top-k", "3"])
    assert job.argv == ["score", "--checkpoint", str(spec_dir / "runs" / "x" / "best"),
                        "--input=s3://b/in.parquet", "--output", str(spec_dir / "out" / "s"), "--top-k", "3"]
    assert job.name == "s"


def test_submit_options_may_follow_the_spec(spec_dir, capsys):
    unreachable = f"http://127.0.0.1:{free_ports(1)[0]}"
    assert cli.main(["submit", "jobs/x.yaml", "--address", unreachable, "--follow"]) == 1
    assert f"cannot reach the Ray Jobs API at {unreachable}" in capsys.readouterr().err


def test_the_runtime_env_ships_the_working_dir_and_this_distdl_but_no_venv_runs_or_data(spec_dir):
    env = submit.runtime_env(spec_dir)
    assert env["working_dir"] == str(spec_dir)
    assert env["py_modules"] == [str(Path(submit.__file__).parent)]
    assert {".git", ".venv", "runs/", "data/", "__pycache__"} <= set(env["excludes"])


def test_help_explains_submit_and_jobs(capsys):
    for argv in (["submit", "--help"], ["jobs", "--help"], ["jobs", "logs", "--help"]):
        with pytest.raises(SystemExit) as exit:
            cli.main(argv)
        assert exit.value.code == 0
    out = capsys.readouterr().out
    assert "RAY_AUTH_TOKEN" in out and "--working-dir" in out and "http://HEAD:8265" in out
    assert "keep streaming until the job ends" in out


def test_a_job_imports_the_distdl_it_shipped(ray_cluster, spec_dir, monkeypatch):
    """The cluster's Python has its own (installed) distdl; the job must use the shipped copy."""
    monkeypatch.setenv("RAY_AUTH_TOKEN", ray_cluster.token)
    jobs = submit.Jobs(ray_cluster.address)
    job_id = jobs.client.submit_job(entrypoint="python -c 'import distdl; print(distdl.__file__)'",
                                    runtime_env=submit.runtime_env(spec_dir))
    assert jobs.wait(job_id) == "SUCCEEDED"
    # On a loaded machine the printed line can reach the job's log a moment after the status,
    # and before or after the supervisor's own "Running entrypoint ..." line.
    imported = wait_for(lambda: next((line for line in jobs.logs(job_id).splitlines()
                                      if line.endswith("__init__.py")), None), "the job's output")
    assert imported.startswith(ray_cluster.temp_dir) and "/py_modules_files/" in imported


@pytest.mark.parametrize("token, message", [
    (None, "requires an auth token and none was found: set RAY_AUTH_TOKEN"),
    ("0" * 64, "refused the auth token from RAY_AUTH_TOKEN: it is not this cluster's token"),
])
def test_a_missing_or_wrong_token_is_one_clear_line(ray_cluster, token, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    if token:
        monkeypatch.setenv("RAY_AUTH_TOKEN", token)
    else:
        monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    assert cli.main(["jobs", "list", "--address", ray_cluster.address]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: the Ray cluster at {ray_cluster.address} ") and message in err
    assert "~/.ray/auth_token" in err and len(err.strip().splitlines()) == 1


def test_the_token_may_come_from_a_file(ray_cluster, tmp_path, monkeypatch, capsys):
    (tmp_path / "token").write_text(ray_cluster.token + "\n")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    code, _ = distdl_main(capsys, "jobs", "list", "--address", ray_cluster.address)
    assert code == 0


def test_an_unknown_job_is_named(ray_cluster, monkeypatch, capsys):
    monkeypatch.setenv("RAY_AUTH_TOKEN", ray_cluster.token)
    assert cli.main(["jobs", "status", "raysubmit_nope", "--address", ray_cluster.address]) == 1
    assert "error: no job 'raysubmit_nope' on the Ray cluster at" in capsys.readouterr().err


# ---- what a job uploads: no secrets unless asked, and the token never in clear -------------------
@pytest.fixture
def project(spec_dir) -> Path:
    """spec_dir with likely secrets: some listed in .gitignore / .rayignore (at any depth), some
    under folders distdl or Ray never upload, and cert.pem, which would be uploaded."""
    files = {".env": "KEY=1", "keys/id_rsa": "-", "sub/credentials.json": "{}", "sub/b.txt": "b", "a.py": "",
             "data/x.pem": "-", ".venv/.aws/config": "-", "cert.pem": "-",
             ".gitignore": ".env\n", ".rayignore": "keys/\n", "sub/.gitignore": "credentials.json\n"}
    for name, text in files.items():
        (spec_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (spec_dir / name).write_text(text)
    return spec_dir


def test_the_upload_listing_is_the_package_ray_builds(project, tmp_path_factory):
    """The listing walks the folder with Ray's packaging code; here it is checked against the zip
    that code builds for the Jobs API, with the excludes the upload uses."""
    listing = upload.listing(project, submit.EXCLUDES)
    assert listing == [".gitignore", ".rayignore", "a.py", "cert.pem", "jobs/x.yaml", "sub/.gitignore", "sub/b.txt"]
    zipped = tmp_path_factory.mktemp("package") / "working_dir.zip"
    packaging.create_package(str(project), zipped, include_gitignore=True,
                             excludes=ray_constants.get_runtime_env_default_excludes() + submit.EXCLUDES)
    with zipfile.ZipFile(zipped) as package:
        assert sorted(n for n in package.namelist() if not n.endswith("/")) == listing
    assert upload.likely_secrets(listing) == ["cert.pem"]


def test_submit_refuses_to_upload_likely_secrets_unless_allowed(project, capsys):
    unreachable = f"http://127.0.0.1:{free_ports(1)[0]}"
    assert cli.main(["submit", "jobs/x.yaml", "--address", unreachable]) == 1
    err = capsys.readouterr().err
    assert "the working directory . holds files that look like secrets" in err and ": cert.pem." in err
    assert "--allow-secrets" in err and "cannot reach" not in err  # refused before the cluster is contacted
    assert cli.main(["submit", "jobs/x.yaml", "--address", unreachable, "--allow-secrets"]) == 1
    assert "cannot reach the Ray Jobs API" in capsys.readouterr().err
    (project / ".rayignore").write_text("keys/\n*.pem\n")
    assert cli.main(["submit", "jobs/x.yaml", "--address", unreachable]) == 1
    assert "cannot reach the Ray Jobs API" in capsys.readouterr().err


def test_the_job_runs_in_exactly_the_listed_files(ray_cluster, project, monkeypatch):
    """What the cluster unpacked as the job's working directory is the listing."""
    (project / "cert.pem").unlink()
    monkeypatch.setenv("RAY_AUTH_TOKEN", ray_cluster.token)
    jobs = submit.Jobs(ray_cluster.address)
    walk = "import os, json; print(json.dumps(sorted(os.path.relpath(os.path.join(d, f)) for d, _, fs in os.walk('.') for f in fs)))"
    job_id = jobs.client.submit_job(entrypoint=shlex.join(["python", "-c", walk]), runtime_env=submit.runtime_env(project))
    assert jobs.wait(job_id) == "SUCCEEDED"
    # On a loaded machine the output can reach the job's log a moment after the status.
    shipped = wait_for(lambda: next((line for line in jobs.logs(job_id).splitlines() if line.startswith('["')), None),
                       "the job's output")
    assert json.loads(shipped) == upload.listing(project, submit.EXCLUDES)


@pytest.mark.parametrize("address, in_clear", [
    ("http://10.0.0.5:8265", True), ("head:8265", True), ("ray://head:10001", True),
    ("https://head:8265", False), ("http://127.0.0.1:8265", False), ("localhost:8265", False),
    ("http://[::1]:8265", False),
])
def test_a_token_over_plain_http_to_another_host_is_flagged(address, in_clear):
    assert submit.sent_in_clear(address) is in_clear


def test_the_token_warning_is_printed_before_the_cluster_is_contacted(monkeypatch, capsys):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "0" * 64)
    address = f"http://0.0.0.0:{free_ports(1)[0]}"  # not loopback by name, yet refused at once: no DNS, no wait
    with pytest.raises(submit.JobsError, match="cannot reach"):
        submit.Jobs(address)
    assert f"[distdl] warning: the cluster token goes to {address} over plain http" in capsys.readouterr().err
