"""GPU requests on a machine without a GPU: Ray schedules GPUs by count, so a raylet told it
has one (`--num-gpus 1`) places GPU actors and replicas; the GPU path runs as far as torch.
What this checks is that `--gpus` and `gpus_per_replica` reach Ray as GPU requests (Ray gave
the process GPU 0), and that a node whose torch cannot use its GPU fails with that reason.
The GPU path itself (CUDA, NCCL, bf16) runs in scripts/gpu_check.sh on a GPU machine."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from test_predict import tiny_checkpoint
from test_serve import free_port

# An embedded Ray whose one node claims a GPU, running `distdl` commands one after another.
ON_A_NODE_CLAIMING_A_GPU = """
import sys, ray
from distdl import cli
ray.init(address="local", num_cpus=4, num_gpus=1, include_dashboard=False)
for command in sys.argv[1:]:
    print("exit", cli.main(command.split()), flush=True)
"""

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine's GPU would be used")


def test_gpu_actors_and_replicas_get_a_gpu_from_ray_and_a_node_torch_cannot_use_it_on_is_named(
        ray_session, digits, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt", digits["train"], spec={"name": "digits"})
    score = f"score --checkpoint {ckpt} --input {digits['holdout']} --output {tmp_path / 'out'} --gpus 0.5"
    serve = f"serve --checkpoint {ckpt} --set gpus_per_replica=0.5 --host 127.0.0.1 --port {free_port()}"
    # One replica start, not Serve's three (each a new process importing torch: ~9 s here).
    env = {**os.environ, "RAY_SERVE_MAX_PER_REPLICA_RETRY_COUNT": "1"}
    result = subprocess.run([sys.executable, "-c", ON_A_NODE_CLAIMING_A_GPU, score, serve],
                            capture_output=True, text=True, timeout=600, env=env)
    assert [line for line in result.stdout.splitlines() if line.startswith("exit ")] == ["exit 1", "exit 1"], (
        result.stderr[-3000:])
    reason = f"a GPU was asked for (--gpus, gpus_per_replica) but torch {torch.__version__} on "
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors[0].startswith(f"error: scoring failed: {reason}"), errors
    assert errors[1].startswith(f"error: no replica of digits could start: {reason}"), errors
    assert all(error.endswith("(CUDA_VISIBLE_DEVICES=0)") for error in errors)  # Ray assigned GPU 0
