"""Online serving (distdl serve). ``distdl.serve:build_app`` is the import path that exported
Serve configs and KubeRay RayServices name; the rest is what the CLI, k8s and tests use.

    app.py       checkpoints -> the Serve application (build_app), config export, run until Ctrl-C
    api.py       the FastAPI ingress: probes, /models, one route per served task (ROUTES), auth, body cap
    model.py     the model deployment: Predictor + @serve.batch, one forward pass per option set
    overload.py  shedding load: full queues and the body budget answer 503 + Retry-After, timeouts 504
    metrics.py   per-model Prometheus metrics through Ray's: requests, latency, refusals, rows per forward pass
    schema.py    ModelInfo, limits, error shapes, and the Route record each ROUTES entry is
    bodies.py    request bodies shared by the tasks: JSON, file uploads (octet-stream, multipart, base64)
    classify.py  the answer of every classification route (top-k)
    image.py, sequence.py, audio.py, text.py, gan.py   one module per input kind: its routes
"""
from distdl.serve.app import APP_NAME, IMPORT_PATH, build_app, export_config, load_models, run, split_entry

__all__ = ["APP_NAME", "IMPORT_PATH", "build_app", "export_config", "load_models", "run", "split_entry"]
