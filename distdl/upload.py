"""What `distdl submit` uploads as a job's working directory, and the refusal to upload secrets.

The listing walks the folder with Ray's own packaging code (ray._private.runtime_env.packaging,
the traversal that zips a working_dir for the Jobs API), so it honours exactly what the upload
honours: Ray's default excludes, the job's ``excludes``, and every .gitignore (unless
RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1) and .rayignore on the way down.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from ray._private import ray_constants
from ray._private.runtime_env import packaging
from ray._private.thirdparty.pathspec import PathSpec

# Files that usually hold credentials, as gitignore patterns (a pattern ending in / is a folder).
SECRET_PATTERNS = [".env", ".env.*", "*.pem", "id_rsa*", ".aws/", "credentials*"]
SHOWN = 10  # secrets named in the error; the rest are counted
# Ray's INFO lines ("Ignoring upload to cluster for these files") stay out of the console.
_quiet = logging.getLogger(__name__)


class SecretsError(ValueError):
    """The working directory would upload files that look like secrets."""


def listing(working_dir: Path, excludes: list[str]) -> list[str]:
    """The files Ray uploads for ``working_dir`` with ``excludes``: paths relative to it, sorted."""
    root = working_dir.absolute()
    include_gitignore = os.environ.get(ray_constants.RAY_RUNTIME_ENV_IGNORE_GITIGNORE, "0") != "1"
    excluded = [packaging._get_excludes(root, ray_constants.get_runtime_env_default_excludes() + list(excludes))]
    files: list[str] = []

    def collect(path: Path) -> None:
        if path.is_file():
            files.append(path.relative_to(root).as_posix())

    packaging._dir_travel(root, excluded, collect, include_gitignore=include_gitignore, logger=_quiet)
    return sorted(files)


def likely_secrets(files: list[str]) -> list[str]:
    secret = PathSpec.from_lines("gitwildmatch", SECRET_PATTERNS)
    return [f for f in files if secret.match_file(f)]


def refuse_secrets(working_dir: Path, excludes: list[str]) -> None:
    """Raise SecretsError naming the files of ``working_dir`` that look like secrets and would be uploaded."""
    found = likely_secrets(listing(working_dir, excludes))
    if not found:
        return
    named = ", ".join(found[:SHOWN]) + (f" and {len(found) - SHOWN} more" if len(found) > SHOWN else "")
    raise SecretsError(f"the working directory {working_dir} holds files that look like secrets, and the job "
                       f"would upload them to the cluster: {named}. List them in .gitignore or .rayignore there "
                       "(Ray uploads neither), move them out, or pass --allow-secrets to upload them anyway")
