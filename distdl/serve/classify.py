"""The answer of every classification route (images, sequences, audio, texts): the top-k
classes with probabilities per item. The Predictor computes the model's ``serve.top_k``
best; a request's ``?top_k=`` keeps fewer."""
from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from distdl.serve.schema import Limits, ModelInfo


class ClassifyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt parameter is a 422, not silently ignored
    top_k: Optional[int] = Field(None, ge=1, description="labels to list per item (default and most: the "
                                 "model's serve.top_k)")


class Scored(BaseModel):
    label: Union[StrictInt, str]
    probability: float


class Classification(Scored):
    top: list[Scored] = Field(description="best first")


class ClassifyResponse(BaseModel):
    model: str
    checkpoint_id: str
    predictions: list[Classification] = Field(description="one per item, in request order")


def respond(info: ModelInfo, rows: list[dict], params: ClassifyParams) -> ClassifyResponse:
    k = min(params.top_k or info.limits.top_k, info.limits.top_k)
    predictions = [Classification(label=r["label"], probability=r["probability"], top=[
        Scored(label=label, probability=p) for label, p in zip(r["top_labels"][:k], r["top_probabilities"][:k])])
        for r in rows]
    return ClassifyResponse(model=info.name, checkpoint_id=info.checkpoint_id, predictions=predictions)


def predictor_options(limits: Limits) -> dict[str, Any]:
    return {"top_k": limits.top_k}
