"""Ray Jobs: run a distdl command on a running Ray cluster, then follow, list or stop it.

A job ships the working directory and the client's own copy of the distdl package
(runtime_env ``py_modules``), so the cluster runs exactly the code that submitted it; the
cluster's ``python`` only needs distdl's dependencies. Relative paths in the command are
made absolute against the client's current directory, as a local run would read them,
and the job must find them at the same place (docs/clusters.md).
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import shlex
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, TextIO
from urllib.parse import urlsplit

import yaml
from ray.exceptions import AuthenticationError
from ray.job_submission import JobDetails, JobStatus, JobSubmissionClient
from requests.exceptions import RequestException

import distdl
from distdl import spec as specmod
from distdl.logs import say
from distdl.paths import absolute, is_uri

# Never shipped: environments, VCS data, caches, run outputs and data sets (those belong on
# storage every node sees). Ray also skips what .gitignore and .rayignore list; files that look
# like secrets are refused before upload (distdl.upload).
EXCLUDES = [".git", ".venv", "venv", "__pycache__", "*.pyc", ".pytest_cache", "runs/", "out/", "data/"]
SCORE_PATH_OPTIONS = ("--checkpoint", "--input", "--output")
TOKEN_HELP = ("set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH to a file holding it), or save it in "
              "~/.ray/auth_token; `ray get-auth-token` on the head node prints it")


class JobsError(RuntimeError):
    """The cluster cannot be reached, refuses us, or has no such job: one line that says which."""


@dataclass
class Job:
    """A distdl command for the cluster: ``python -m distdl <argv>`` in the shipped working dir."""
    argv: list[str]
    kind: str  # "train", "tune" or "score"
    name: str  # the spec's run name, or the score output folder's name

    @property
    def entrypoint(self) -> str:
        return "python -m distdl " + shlex.join(self.argv)


def auth_token() -> tuple[Optional[str], str]:
    """The cluster token and where it came from, in Ray's own order of precedence."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN"
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip(), str(path)
    return None, "nowhere"


def spec_job(command: str, spec_path: str, overrides: list[str], working_dir: Path, extra: list[str] = ()) -> Job:
    """`distdl COMMAND SPEC` (train or tune): check the spec here, as a local run would, and pin its
    relative paths to absolute ones."""
    spec = specmod.load(spec_path, overrides)  # a bad spec fails before anything is uploaded
    cwd = Path.cwd()
    pinned = []
    for key, path in specmod.path_fields(specmod.read_raw(spec_path, overrides)).items():
        if not is_uri(path) and not Path(path).is_absolute():
            pinned_path = absolute(path, cwd)
            # JSON quoting only where YAML would read the bare path as something else.
            value = pinned_path if yaml.safe_load(pinned_path) == pinned_path else json.dumps(pinned_path)
            pinned += ["--set", f"{key}={value}"]
    sets = [arg for item in overrides for arg in ("--set", item)]
    argv = [command, _inside(Path(spec_path), working_dir), *sets, *pinned, *extra]
    return Job(argv, command, spec.name)


def score_job(argv: list[str]) -> Job:
    """``argv`` after ``score``, with --checkpoint/--input/--output made absolute."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        option, eq, value = arg.partition("=")
        if option not in SCORE_PATH_OPTIONS:
            continue
        if eq:
            argv[i] = f"{option}={_absolute(value)}"
        elif i + 1 < len(argv):
            argv[i + 1] = _absolute(argv[i + 1])
    output = argv[argv.index("--output") + 1] if "--output" in argv else "score"
    return Job(["score", *argv], "score", Path(output).name)


def _absolute(path: str) -> str:
    return path if is_uri(path) else absolute(path)


def _inside(spec_path: Path, working_dir: Path) -> str:
    """The spec's path inside the shipped working directory, where the job finds it."""
    try:
        return spec_path.resolve().relative_to(working_dir.resolve()).as_posix()
    except ValueError:
        raise JobsError(f"spec {spec_path} is outside the working directory {working_dir} that is shipped "
                        "to the cluster; move it there or pass --working-dir") from None


def runtime_env(working_dir: Path) -> dict:
    return {"working_dir": str(working_dir), "py_modules": [str(Path(distdl.__file__).parent)],
            "excludes": EXCLUDES}


def sent_in_clear(address: str) -> bool:
    """True when ``address`` is plain http (Ray's default for a bare HOST:PORT; a ray:// address is
    looked up over plain gRPC, then http) to a host that is not this machine's loopback. Names other
    than localhost are not resolved: they count as remote."""
    parts = urlsplit(address if "://" in address else f"http://{address}")
    if parts.scheme not in ("http", "ray"):
        return False
    host = parts.hostname or ""
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host != "localhost"


@contextmanager
def _env_without(*names: str) -> Iterator[None]:
    saved = {n: os.environ.pop(n) for n in names if n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


class Jobs:
    """The Ray Jobs API of one cluster, with the token sent and its failures made readable."""

    def __init__(self, address: Optional[str]):
        self.address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") \
            or "http://127.0.0.1:8265"
        self.token, self.token_source = auth_token()
        if self.token and sent_in_clear(self.address):
            say(f"[distdl] warning: the cluster token goes to {self.address} over plain http, readable on the "
                "way; use https, or reach the dashboard through a tunnel on 127.0.0.1 (ssh -L, kubectl "
                "port-forward)", err=True)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        # Ray lets RAY_ADDRESS / RAY_API_SERVER_ADDRESS override an explicit address: --address must win.
        with self._errors(), _env_without("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
            self.client = JobSubmissionClient(self.address, headers=headers)

    @contextmanager
    def _errors(self, job_id: str = "") -> Iterator[None]:
        try:
            yield
        except AuthenticationError as exc:
            if self.token is None or "Authentication required" in str(exc):
                raise JobsError(f"the Ray cluster at {self.address} requires an auth token and none was "
                                f"found: {TOKEN_HELP}") from None
            raise JobsError(f"the Ray cluster at {self.address} refused the auth token from {self.token_source}: "
                            f"it is not this cluster's token; {TOKEN_HELP}") from None
        except (ConnectionError, RequestException):
            raise JobsError(f"cannot reach the Ray Jobs API at {self.address}: is the cluster up, and is this "
                            "its dashboard address (http://HEAD:8265)? Pass --address") from None
        except RuntimeError as exc:
            if "status code 404" in str(exc):
                raise JobsError(f"no job '{job_id}' on the Ray cluster at {self.address} "
                                "(distdl jobs list shows them)") from None
            raise

    def submit(self, job: Job, working_dir: Path) -> str:
        with self._errors():
            return self.client.submit_job(entrypoint=job.entrypoint, runtime_env=runtime_env(working_dir),
                                          metadata={"distdl": job.kind, "name": job.name})

    def info(self, job_id: str) -> JobDetails:
        with self._errors(job_id):
            return self.client.get_job_info(job_id)

    def list(self) -> list[JobDetails]:
        with self._errors():
            return sorted(self.client.list_jobs(), key=lambda j: j.start_time or 0)

    def logs(self, job_id: str) -> str:
        with self._errors(job_id):
            return self.client.get_job_logs(job_id)

    def follow(self, job_id: str, out: TextIO) -> JobStatus:
        """Stream the job's logs to ``out`` until it ends; its final status."""
        streamed = []

        async def tail() -> None:
            async for chunk in self.client.tail_job_logs(job_id):
                out.write(chunk)
                out.flush()
                streamed.append(chunk)

        with self._errors(job_id):
            self.client.get_job_status(job_id)  # an unknown id fails here, not inside the websocket
            asyncio.run(tail())
        status = self.wait(job_id)
        # The stream can close before the last lines reach it (seen on a loaded machine): add them.
        text, logs = "".join(streamed), self.logs(job_id)
        if logs.startswith(text):
            out.write(logs[len(text):])
        return status

    def stop(self, job_id: str) -> bool:
        """Ask the job to stop (SIGTERM, then SIGKILL); False when it had already ended."""
        with self._errors(job_id):
            return self.client.stop_job(job_id)

    def wait(self, job_id: str, poll_s: float = 0.5) -> JobStatus:
        while not (status := self.info(job_id).status).is_terminal():
            time.sleep(poll_s)
        return status


def _when(ms: Optional[int]) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"


def summary_line(job: JobDetails) -> str:
    """One job in `distdl jobs list`."""
    return f"{job.submission_id}  {str(job.status):<9}  {_when(job.start_time)}  {job.entrypoint}"


def describe(job: JobDetails) -> str:
    """One job, as `distdl jobs status` prints it."""
    lines = [f"{job.submission_id}: {job.status}", f"  entrypoint: {job.entrypoint}",
             f"  started:    {_when(job.start_time)}", f"  ended:      {_when(job.end_time)}"]
    if job.message:
        lines.append(f"  message:    {job.message}")
    return "\n".join(lines)
