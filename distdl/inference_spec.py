"""The job spec's sections for using a trained checkpoint: ``serve`` and ``score``.

Both are read from the checkpoint's spec.yaml, so a job spec can carry how its model is served
and scored; ``distdl serve --set`` and ``distdl score``'s flags override them per run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Literal, Union

from distdl.preprocessors.image import MAX_PIXELS
from distdl.specbase import Auto, check, knob
from distdl.tasks.language_model import MAX_NEW_TOKENS

# The request bodies the serving ingress holds at once, all requests together: past it a request
# gets 503 and Retry-After, so a flood of large bodies cannot exhaust its memory (serve/overload.py).
INGRESS_BODY_BYTES = 2**30


@dataclass
class ServeSpec:
    """Online serving (distdl serve): read from the checkpoint's spec.yaml; CLI --set overrides."""
    min_replicas: int = knob(1, help="replicas per model, at least")
    max_replicas: int = knob(1, help="replicas per model, at most; above `min_replicas`: autoscaling on")
    target_ongoing_requests: float = knob(8.0, help="per replica: the autoscaler adds replicas while the load stays "
                                                    "above this")
    upscale_delay_s: float = knob(30.0, help="how long the load must stay high before a replica is added")
    downscale_delay_s: float = knob(600.0, help="how long the load must stay low before a replica is removed")
    look_back_period_s: float = knob(30.0, help="window the autoscaler averages ongoing requests over (> 10: Serve "
                                                "pushes load metrics every 10 s)")
    max_batch_size: int = knob(16, help="most rows gathered from concurrent requests into one forward pass")
    batch_wait_timeout_s: float = knob(0.0, help="longest wait for more rows once one arrives at an idle replica; "
                                                 "under load batches fill without it: rows that arrive during a "
                                                 "forward pass go together into the next one")
    max_ongoing_requests: int = knob(32, help="requests a replica takes at once; caps what a batch can gather, so "
                                              "it must be >= `max_batch_size`")
    max_queued_requests: int = knob(64, help="requests waiting for a free replica beyond those the replicas hold "
                                             "(`max_ongoing_requests` each); more: 503 with `Retry-After`")
    request_timeout_s: float = knob(60.0, help="longest a request waits for its model, queued and computed; "
                                               "longer: 504 (the model drops the request)")
    cpus_per_replica: float = knob(1.0, help="Ray CPUs per replica (fractions allowed)")
    gpus_per_replica: float = knob(0.0, help="GPUs per replica; above 0 the model runs on cuda; fractions share a GPU")
    threads_per_replica: Union[Auto, int] = knob("auto", help="torch threads per replica; auto: its CPUs")
    backend: Literal["torch", "onnx"] = knob("torch", help="what runs the model: `torch`, or `onnx`: each replica "
                                                           "exports it as it starts and runs it in onnxruntime")
    top_k: int = knob(5, help="most labels a classification answer lists per item (and the default `?top_k`)")
    max_body_bytes: int = knob(8 * 2**20, help="larger request bodies: 413")
    max_items_per_request: int = knob(64, help="more items in one request (images, sequences, clips, texts, "
                                               "prompts; a GAN's `n`): 413")
    max_image_pixels: int = knob(2**24, help="width x height of one image, read from its header; more: 413")
    max_text_chars: int = knob(20000, help="characters in one text or prompt; more: 413")
    max_new_tokens: int = knob(200, help="language models: the default and the most tokens generated per prompt")

    def problems(self) -> Iterator[tuple[str, str]]:
        for name in ("min_replicas", "max_batch_size", "max_ongoing_requests", "max_queued_requests", "top_k",
                     "max_body_bytes", "max_items_per_request", "max_image_pixels", "max_text_chars", "max_new_tokens"):
            yield from check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        yield from check(self.max_image_pixels <= MAX_PIXELS, "max_image_pixels",
                         f"must be <= {MAX_PIXELS}, the most any image is decoded to; got {self.max_image_pixels}")
        yield from check(self.max_new_tokens <= MAX_NEW_TOKENS, "max_new_tokens",
                         f"must be <= {MAX_NEW_TOKENS}; got {self.max_new_tokens}")
        yield from check(self.max_replicas >= self.min_replicas, "max_replicas",
                         f"must be >= min_replicas ({self.min_replicas}), got {self.max_replicas}")
        yield from check(self.max_ongoing_requests >= self.max_batch_size, "max_ongoing_requests",
                         f"must be >= max_batch_size ({self.max_batch_size}), or batches can never fill; "
                         f"got {self.max_ongoing_requests}")
        # Serve pushes autoscaling metrics every 10 s; a shorter window is deprecated there.
        yield from check(self.look_back_period_s > 10, "look_back_period_s",
                         f"must be > 10 (Serve's metrics push interval), got {self.look_back_period_s}")
        yield from check(self.max_body_bytes <= INGRESS_BODY_BYTES, "max_body_bytes",
                         f"must be <= {INGRESS_BODY_BYTES}, the request bodies the server holds at once; "
                         f"got {self.max_body_bytes}")
        yield from check(0 < self.request_timeout_s < math.inf, "request_timeout_s",
                         f"must be a finite number > 0, got {self.request_timeout_s}")
        for name in ("target_ongoing_requests", "cpus_per_replica"):
            yield from check(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)}")
        for name in ("upscale_delay_s", "downscale_delay_s", "batch_wait_timeout_s", "gpus_per_replica"):
            yield from check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        threads = self.threads_per_replica
        yield from check(threads == "auto" or threads >= 1, "threads_per_replica", f"must be >= 1 or 'auto', got {threads}")


@dataclass
class ScoreSpec:
    """Batch scoring (distdl score): read from the checkpoint's spec.yaml; the command's flags override."""
    batch_size: int = knob(256, help="rows per forward pass (`--batch-size`)")
    min_actors: int = knob(1, help="actors kept while the pool scales (`--min-actors`)")
    max_actors: Union[Auto, int] = knob("auto", help="largest pool (`--max-actors`); auto: one per GPU, else every "
                                                     "CPU but one (left for reading)")
    cpus_per_actor: float = knob(1.0, help="Ray CPUs per actor, fractions allowed (`--cpus`)")
    gpus_per_actor: float = knob(0.0, help="GPUs per actor (`--gpus`); above 0 the model runs on cuda; fractions "
                                           "share a GPU")
    rows_per_file: Union[Auto, int] = knob("auto", help="rows per output parquet part (`--rows-per-file`); auto: "
                                                        "one part per scored block")
    backend: Literal["torch", "onnx"] = knob("torch", help="what runs the model (`--backend`): `torch`, or `onnx`: "
                                                           "the model exported once (distdl export) and run by "
                                                           "onnxruntime in every actor")

    def problems(self) -> Iterator[tuple[str, str]]:
        for name in ("batch_size", "min_actors"):
            yield from check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        yield from check(self.max_actors == "auto" or self.max_actors >= self.min_actors, "max_actors",
                         f"must be >= min_actors ({self.min_actors}) or 'auto', got {self.max_actors}")
        yield from check(self.cpus_per_actor > 0, "cpus_per_actor", f"must be > 0, got {self.cpus_per_actor}")
        yield from check(self.gpus_per_actor >= 0, "gpus_per_actor", f"must be >= 0, got {self.gpus_per_actor}")
        yield from check(self.rows_per_file == "auto" or self.rows_per_file >= 1, "rows_per_file",
                         f"must be >= 1 or 'auto', got {self.rows_per_file}")
