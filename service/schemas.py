"""Request and response models of the API (pydantic v2): ``*Create`` in, ``*Public`` out.

The toy spec model checks types, ranges and unknown fields; cross-field rules (a ``w_star`` of
length ``d``, an ``s`` no larger than ``d``, each sweep configuration) are checked by the same
:mod:`rvsm.toy` code the CLI runs, so the API and ``rvsm toy`` accept exactly the same specs.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


class TeacherSpec(BaseModel):
    model_config = STRICT

    seed: int | None = Field(None, ge=0)
    w_star: list[float] | None = Field(None, min_length=1, description="normalised to unit length")
    sparsity: int | None = Field(None, ge=1)
    values: Literal["equal", "gaussian"] | None = None


class InitSpec(BaseModel):
    model_config = STRICT

    seed: int | None = Field(None, ge=0)
    w0: list[float] | None = Field(None, min_length=1, description="used as given")


class ToySpecCreate(BaseModel):
    """A toy job (SPEC §8). Unknown fields are rejected."""

    model_config = STRICT

    kind: Literal["toy"] = "toy"
    network: Literal["relu", "binary"] = "relu"
    k: int = Field(..., ge=1)
    d: int = Field(..., ge=1)
    teacher: TeacherSpec | None = None
    init: InitSpec | None = None
    algorithm: Literal["rvsm", "rvscgd", "aht", "gd", "admm"] = "rvsm"
    normalize: bool = True
    penalty: Literal["l0", "l1", "tl1", "group_l1"] = "l0"
    a: float = Field(1.0, gt=0)
    lam: float = Field(..., ge=0)
    beta: float = Field(..., gt=0)
    eta: float = Field(..., gt=0)
    max_iters: int = Field(20000, ge=1)
    tol: float = Field(0.0, ge=0)
    gradient: Literal["population", "empirical"] = "population"
    samples: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)
    data_seed: int = Field(0, ge=0)
    s: int | None = Field(None, ge=1)
    log_every: int = Field(10, ge=1)
    dtype: Literal["float64", "float32"] = "float64"
    time_budget_s: float | None = Field(None, gt=0)
    sweep: dict[str, list[Any]] | None = Field(None, description="grid over any fields, run as one batched job")

    def to_spec(self) -> dict:
        """The plain JSON spec as :mod:`rvsm.toy` takes it (unset options left out)."""
        return self.model_dump(exclude_none=True, exclude_unset=False)


class Progress(BaseModel):
    fraction: float
    iteration: int
    max_iters: int
    eta_s: float | None


class JobCreated(BaseModel):
    id: str
    state: str
    url: str


class JobPublic(BaseModel):
    id: str
    kind: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    url: str
    queue: str
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    progress: Progress
    attempts: int
    cancel_requested: bool
    error: str | None
    summary: dict | None = Field(None, description="headline numbers of the result, for gates")
    spec: dict


class JobList(BaseModel):
    items: list[JobPublic]
    total: int
    limit: int
    offset: int


class MetricsPublic(BaseModel):
    job_id: str
    state: str
    points: list[dict] = Field(description="trace points in order; each has 'seq' and 'iter'")
    next_since: int = Field(description="pass as ?since= to get only newer points")


class ArtifactPublic(BaseModel):
    name: str
    size: int
    sha256: str
    media_type: str
    url: str


class DatasetSpec(BaseModel):
    """``digits`` (bundled), ``upload`` (the multipart ``dataset`` file), ``folder`` (a directory under
    the server's RVSM_DATASETS_DIR, ImageFolder layout) or ``synthetic`` (teacher-student)."""

    model_config = STRICT

    name: Literal["digits", "upload", "folder", "synthetic"] = "digits"
    path: str | None = Field(None, description="folder: path relative to RVSM_DATASETS_DIR")
    input_size: int | None = Field(None, ge=4, le=512, description="folder: images are resized to this")
    grayscale: bool = True
    samples: int = Field(2000, ge=10, le=1_000_000, description="synthetic: how many")
    num_classes: int = Field(4, ge=2, le=1000, description="synthetic: how many classes")
    val_fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = Field(0, ge=0)


class CheckpointSpecCreate(BaseModel):
    """A checkpoint job: train (or fine-tune an uploaded checkpoint) sparse with RVSM / RVSCGD or a baseline."""

    model_config = STRICT

    kind: Literal["checkpoint"]
    architecture: Literal["mlp", "lenet5", "lenet5_binary", "vgg16", "resnet18"]
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    algorithm: Literal["sgd", "rvsm", "rvscgd", "admm", "magnitude"] = "rvsm"
    penalty: Literal["l0", "l1", "tl1", "group_l1"] = "l0"
    lam: float = Field(5e-5, ge=0)
    beta: float = Field(1e-2, gt=0)
    beta_final: float | None = Field(None, gt=0, description="grow beta to this over the epochs (mu fixed)")
    a: float = Field(1.0, gt=0)
    epochs: int = Field(20, ge=1)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["constant", "step", "cosine"] = "cosine"
    step_size: int = Field(10, ge=1)
    gamma: float = Field(0.1, gt=0, le=1)
    batch_size: int = Field(64, ge=1, le=65536)
    sparsity: float | None = Field(None, ge=0, lt=1, description="admm / magnitude: target fraction of zeros")
    finetune_epochs: int = Field(0, ge=0)
    params: list[str] | None = Field(None, description="parameter names to sparsify; default every conv/linear weight")
    layer_scale: bool = False
    seed: int = Field(0, ge=0)

    def to_spec(self) -> dict:
        return self.model_dump(exclude_none=True)
