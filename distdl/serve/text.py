"""Text over HTTP: classification and embeddings (transformer family) and generation from
prompts (rnn family, character language model). JSON in, JSON out.

Every text is checked against the model's ``serve.max_text_chars`` here (413 naming the
item); tokenizing, the token limit and unknown characters are the Predictor's (422).
A language model's sampling options are per request and bounded by the model's limits;
the replica batches the prompts of requests with equal options together.
"""
from __future__ import annotations

from typing import Any, Optional

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field

from distdl import checkpoint
from distdl.serve import bodies, classify
from distdl.serve.schema import MAX_SEED, Limits, ModelInfo, NoParams, Parsed, Route, problem
from distdl.tasks.language_model import MAX_NEW_TOKENS, MAX_TEMPERATURE, MIN_TEMPERATURE

# Bounds that make the schema finite for clients; a model's own limits are tighter: its
# serve.max_new_tokens (422 above it), and top_k past its vocabulary samples from every token.
MAX_TOP_K = 2**16


class TextRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[str] = Field(min_length=1, description="one or more texts")


class GenerateTextRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompts: list[str] = Field(min_length=1, description="one or more prompts to continue")
    max_new_tokens: Optional[int] = Field(None, ge=0, le=MAX_NEW_TOKENS, description="tokens (characters) to "
                                          "generate per prompt (default and most: the model's serve.max_new_tokens)")
    temperature: float = Field(1.0, ge=0, le=MAX_TEMPERATURE, allow_inf_nan=False,
                               description=f"0 (or below {MIN_TEMPERATURE}): greedy; higher: more random")
    top_k: Optional[int] = Field(None, ge=1, le=MAX_TOP_K, description="sample from the k most likely tokens only")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="the same seed and prompt give the same text")


class EmbedTextResponse(BaseModel):
    model: str
    checkpoint_id: str
    embeddings: list[list[float]] = Field(description="one vector per text, in request order")


class GenerateTextResponse(BaseModel):
    model: str
    checkpoint_id: str
    generated: list[str] = Field(description="the text after each prompt, in request order")


def describe_classifier(checkpoint_path: str) -> dict:
    pre = checkpoint.load_preprocessor(checkpoint_path)
    return {**_tokens(pre), "classes": pre.classes}


def describe_embedder(checkpoint_path: str) -> dict:
    hf_config = checkpoint.load_meta(checkpoint_path)["args"]["hf_config"]
    return {**_tokens(checkpoint.load_preprocessor(checkpoint_path)), "dimensions": hf_config["hidden_size"]}


def _tokens(pre: Any) -> dict:
    return {"max_tokens": pre.max_length, "longer_texts": "cut to max_tokens" if pre.truncate else "refused (422)"}


def describe_prompts(checkpoint_path: str) -> dict:
    pre = checkpoint.load_preprocessor(checkpoint_path)
    return {"max_prompt_chars": pre.max_length, "characters": "".join(pre.vocab[1:])}


async def parse_texts(request: Request, limits: Limits) -> Parsed:
    texts = (await bodies.json_request(request, limits, TextRequest)).texts
    return Parsed(_checked(texts, "texts", limits))


async def parse_prompts(request: Request, limits: Limits) -> Parsed:
    body = await bodies.json_request(request, limits, GenerateTextRequest)
    max_new_tokens = limits.max_new_tokens if body.max_new_tokens is None else body.max_new_tokens
    if max_new_tokens > limits.max_new_tokens:
        raise problem(422, f"max_new_tokens {max_new_tokens} is over this model's limit of {limits.max_new_tokens}",
                      ["body", "max_new_tokens"])
    options = {"max_new_tokens": max_new_tokens, "temperature": body.temperature, "top_k": body.top_k,
               "seed": body.seed}
    return Parsed(_checked(body.prompts, "prompts", limits), options)


def _checked(texts: list[str], field: str, limits: Limits) -> list[str]:
    bodies.check_count(len(texts), field, limits)
    for i, text in enumerate(texts):
        if len(text) > limits.max_text_chars:
            raise problem(413, f"text of {len(text)} characters; this model takes at most {limits.max_text_chars}",
                          [field, i])
    return texts


def respond_embeddings(info: ModelInfo, rows: list[dict], params: NoParams) -> EmbedTextResponse:
    return EmbedTextResponse(model=info.name, checkpoint_id=info.checkpoint_id, embeddings=[r["embedding"] for r in rows])


def respond_generated(info: ModelInfo, rows: list[dict], params: NoParams) -> GenerateTextResponse:
    return GenerateTextResponse(model=info.name, checkpoint_id=info.checkpoint_id, generated=[r["generated"] for r in rows])


CLASSIFY = Route(path="classify-text", items="texts", summary="Classify texts: top-k classes with probabilities",
                params=classify.ClassifyParams, request_body=bodies.json_only(TextRequest),
                response=classify.ClassifyResponse, describe=describe_classifier, parse=parse_texts,
                respond=classify.respond, predictor_options=classify.predictor_options)
EMBED = Route(path="embed-text", items="texts", summary="Embed texts: one vector per text", params=NoParams,
             request_body=bodies.json_only(TextRequest), response=EmbedTextResponse, describe=describe_embedder,
             parse=parse_texts, respond=respond_embeddings)
GENERATE = Route(path="generate-text", items="prompts", summary="Continue prompts with a language model",
                params=NoParams, request_body=bodies.json_only(GenerateTextRequest), response=GenerateTextResponse,
                describe=describe_prompts, parse=parse_prompts, respond=respond_generated)
