"""Sequence classification over HTTP (rnn family, numeric input): JSON sequences in, the
top-k classes with probabilities out.

A sequence is a list of numbers (one value per step) or a list of equal-length vectors (one
per step), as in a parquet/JSON column in batch scoring; the Predictor checks the width, the
length, NaN and infinity, and a bad one is a 422 naming its index.
"""
from __future__ import annotations

from typing import Union

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field

from distdl import checkpoint
from distdl.serve import bodies, classify
from distdl.serve.schema import Limits, Parsed, Route


class SequenceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sequences: list[Union[list[float], list[list[float]]]] = Field(
        min_length=1, description="each a list of numbers (one value per step) or a list of equal-length "
        "vectors (one per step); GET /models gives the values per step and the most steps")


def describe(checkpoint_path: str) -> dict:
    pre = checkpoint.load_preprocessor(checkpoint_path)
    return {"values_per_step": pre.input_size, "max_steps": pre.max_length, "classes": pre.classes}


async def parse(request: Request, limits: Limits) -> Parsed:
    rows = (await bodies.json_request(request, limits, SequenceRequest)).sequences
    bodies.check_count(len(rows), "sequences", limits)
    return Parsed(rows)


ROUTE = Route(path="classify-sequence", items="sequences",
            summary="Classify numeric sequences: top-k classes with probabilities", params=classify.ClassifyParams,
            request_body=bodies.json_only(SequenceRequest),
            response=classify.ClassifyResponse, describe=describe, parse=parse, respond=classify.respond,
            predictor_options=classify.predictor_options)
