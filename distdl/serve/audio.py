"""Audio classification over HTTP (rnn family with ``preprocess.input: audio``): wav files as
raw bytes, multipart ``clips`` files or base64 in JSON; the top-k classes out.

The upload handling is the image route's (bodies); the Predictor reads each wav file
and computes its log-mel/MFCC frames in the replica, exactly as batch scoring does.
"""
from __future__ import annotations

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field

from distdl import checkpoint
from distdl.serve import bodies, classify
from distdl.serve.schema import Limits, Parsed, Route


class AudioRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    clips: list[str] = Field(min_length=1, description="each a base64-encoded wav file")


def describe(checkpoint_path: str) -> dict:
    pre = checkpoint.load_preprocessor(checkpoint_path)
    return {"format": "wav", "sample_rate": pre.audio["sample_rate"], "features": pre.audio["features"],
            "values_per_frame": pre.input_size, "max_frames": pre.max_length,
            "frame_hop_ms": pre.audio["hop_ms"], "classes": pre.classes}


async def parse(request: Request, limits: Limits) -> Parsed:
    # Bytes only: a string row would be read as a file path by the preprocessor.
    return Parsed(await bodies.rows(request, limits, "clips", AudioRequest,
                                          lambda item, i: bodies.from_base64(item, ["clips", i])))


ROUTE = Route(path="classify-audio", items="clips", summary="Classify wav clips: top-k classes with probabilities",
            params=classify.ClassifyParams, request_body=bodies.request_body(AudioRequest, "clips", "wav file"),
            response=classify.ClassifyResponse, describe=describe, parse=parse, respond=classify.respond,
            predictor_options=classify.predictor_options)
