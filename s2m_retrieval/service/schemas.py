"""Request options and response bodies of the `/v1` API (pydantic models: validation and the OpenAPI document)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from s2m_retrieval.errors import BadInputError
from s2m_retrieval.query.ranking import DEFAULT_ALPHA, DEFAULT_NORMALISATION
from s2m_retrieval.query.engine import DEFAULT_CANDIDATES, DEFAULT_K


class OptionError(BadInputError):
    """A request option is missing, unknown, of the wrong type or out of range (HTTP 422)."""


class GenerateOptions(BaseModel):
    """Options of POST /v1/generate besides the sketch."""

    model_config = ConfigDict(extra="forbid")
    steps: int | None = Field(None, ge=0, description="Refinement steps T of H (default: H's trained T; 0 "
                                                       "without H).")


class RetrieveOptions(GenerateOptions):
    """Options of POST /v1/retrieve besides the sketch: a sketch query, or `like` for "more like this"."""

    like: int | None = Field(None, description="Query with this indexed image id instead of a sketch.")
    k: int = Field(DEFAULT_K, ge=1, description="Number of results.")
    candidates: int = Field(DEFAULT_CANDIDATES, ge=1, description="FAISS candidates to re-rank.")
    alpha: float = Field(DEFAULT_ALPHA, ge=0, le=1, description="score = alpha * latent + (1 - alpha) * "
                                                                "perceptual (normalised); 1 skips the re-rank.")
    where: str | None = Field(None, max_length=1000, description="Label filter, e.g. 'tonsil_grade>=3, "
                                                                 "mallampati!=1'.")
    max_distance: float | None = Field(None, ge=0, description="Drop candidates farther than this in W+.")
    normalisation: Literal["minmax", "rank"] = DEFAULT_NORMALISATION
    include_images: bool = Field(False, description="Add x_hat and each hit's thumbnail as PNG data: URLs.")


def parse_options(model: type[BaseModel], fields: dict) -> BaseModel:
    """Validated options; every problem in one OptionError line ("k: Input should be ...; alpha: ...")."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "body"
            text = "unknown option" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{where}: {text}")
        raise OptionError("; ".join(problems)) from None


class ErrorOut(BaseModel):
    """Every refusal and failure: one line saying what was wrong and what to do."""

    detail: str


class HitOut(BaseModel):
    """One ranked result."""

    rank: int
    id: int
    file: str = Field(description="File name in the archive (server paths are not exposed).")
    latent_distance: float
    perceptual_distance: float | None
    score: float = Field(description="Fused score in [0, 1], lower is better.")
    labels: dict
    image_url: str
    meta_url: str
    thumb: str | None = Field(None, description="PNG data: URL of the stored thumbnail (include_images).")


class RetrieveOut(BaseModel):
    """Ranked hits with the query's provenance and stage timings."""

    hits: list[HitOut]
    candidates: int
    timings_ms: dict[str, float]
    provenance: dict
    x_hat: str | None = Field(None, description="PNG data: URL of the generated image (sketch queries, "
                                                "include_images).")
    query_image: str | None = Field(None, description="PNG data: URL of the query image (like queries, "
                                                      "include_images).")


class ImageMetaOut(BaseModel):
    """An indexed image's metadata."""

    id: int
    file: str
    stem: str
    width: int
    height: int
    labels: dict


class LabelColumnOut(BaseModel):
    """A label column offered as a filter; `values` lists its distinct values when there are few."""

    kind: Literal["number", "text"]
    min: int | float | None
    max: int | float | None
    values: list[int | float | str] | None


class IndexOut(BaseModel):
    """The served index: size, model and metric versions, label columns, the service's limits."""

    name: str
    images: int
    model_version: str
    models: dict[str, str | None]
    perceptual: str
    weighting: str
    factory: str
    dim: int
    resolution: int
    refiner: bool
    default_steps: int
    updated_at: str
    label_columns: dict[str, LabelColumnOut]
    limits: dict[str, int]
