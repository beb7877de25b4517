"""Image generation over HTTP (gan family): ``{"n": N, "seed": S}`` in, N PNG images as base64 out.

Image i is the row with id i of ``distdl score --generate N --seed S``: the generator's latent
depends only on (seed, id), so the same request gives the same images on any replica or
batch, and the same images as batch generation.
"""
from __future__ import annotations

import base64

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field

from distdl import checkpoint
from distdl.serve import bodies
from distdl.serve.schema import MAX_SEED, Limits, ModelInfo, NoParams, Parsed, Route


class GenerateImageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = Field(1, ge=1, description="images to generate (most: the model's serve.max_items_per_request)")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="the same seed gives the same images")


class GenerateImageResponse(BaseModel):
    model: str
    checkpoint_id: str
    images: list[str] = Field(description="base64-encoded PNG files; image i is id i of distdl score --generate")


def describe(checkpoint_path: str) -> dict:
    args = checkpoint.load_meta(checkpoint_path)["args"]
    return {"image_size": args["image_size"], "channels": args["channels"], "latent_dim": args["latent_dim"],
            "format": "png"}


async def parse(request: Request, limits: Limits) -> Parsed:
    body = await bodies.json_request(request, limits, GenerateImageRequest)
    bodies.check_count(body.n, "images", limits)
    return Parsed(list(range(body.n)), {"seed": body.seed})


def respond(info: ModelInfo, rows: list[dict], params: NoParams) -> GenerateImageResponse:
    return GenerateImageResponse(model=info.name, checkpoint_id=info.checkpoint_id,
                                 images=[base64.b64encode(r["image"]).decode() for r in rows])


ROUTE = Route(path="generate-image", items="images", summary="Generate images: N seeded samples as base64 PNG",
            params=NoParams, request_body=bodies.json_only(GenerateImageRequest), response=GenerateImageResponse,
            describe=describe, parse=parse, respond=respond)
