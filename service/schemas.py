"""Request and response models of the API (pydantic v2): ``*Create`` in, ``*Public`` out.

The toy spec model checks types, ranges and unknown fields; cross-field rules (a ``w_star`` of
length ``d``, an ``s`` no larger than ``d``, each sweep configuration) are checked by the same
:mod:`rvsm.toy` code the CLI runs, so the API and ``rvsm toy`` accept exactly the same specs.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from jobs.states import JobState
from rvsm.data import IGNORE_INDEX
from rvsm.train import (
    BATCH_SIZES,
    DEFAULT_BETA,
    DEFAULT_LR,
    DEFAULT_WEIGHT_DECAY,
    MIN_KEEP,
    MIN_STEPS,
    SGD_MOMENTUM,
    TrainConfig,
)

STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)
OPEN = ConfigDict(extra="allow")  # documents: the listed fields are always there; more may be added


def _utc(value: dt.datetime) -> dt.datetime:
    """Timestamps leave the API in UTC with their zone (``...Z``); a naive one (SQLite) is UTC."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


UtcDatetime = Annotated[dt.datetime, AfterValidator(_utc)]


class ErrorItem(BaseModel):
    loc: list[str | int] = Field(description="where: 'body', 'query', 'path' or 'header', then the field")
    msg: str = Field(description="the rule the value broke")
    type: str


class ErrorPublic(BaseModel):
    """Every error response (4xx, 503): one readable ``message`` naming the field and the rule, and the
    ``detail`` (a string, or FastAPI's list of field errors)."""

    detail: str | list[ErrorItem]
    message: str = Field(description="e.g. 'd: must be <= 100000, got 1000000'")


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
    """A toy job (docs/math.md). Unknown fields are rejected."""

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


class Readiness(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(description="database, broker (and worker in embedded mode): 'ok' or the error")


class Progress(BaseModel):
    """How far a job is. Toy jobs count iterations; checkpoint jobs count optimizer steps in
    ``iteration`` / ``max_iters`` and say where that is in ``epoch`` (the one under way, from 1) of
    ``epochs`` and ``step`` of that epoch's ``steps`` (``null`` until the worker has started)."""

    fraction: float
    iteration: int
    max_iters: int
    eta_s: float | None
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    steps: int | None = None


class JobCreated(BaseModel):
    id: str
    state: JobState
    url: str


class JobBatchCreate(BaseModel):
    """Many toy jobs in one request: one job, with its own id, per spec."""

    model_config = STRICT

    jobs: list[ToySpecCreate] = Field(
        ...,
        min_length=1,
        description="toy specs, each as POST /v1/jobs takes it: at most RVSM_MAX_BATCH_SUBMIT of them, and at most "
        "RVSM_SWEEP_CAP configurations in all (a sweep counts each of its configurations)",
    )


class JobBatchCreated(BaseModel):
    items: list[JobCreated] = Field(..., description="the jobs, in the order of their specs")


class JobPublic(BaseModel):
    id: str
    kind: str
    state: JobState
    url: str
    queue: str
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
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
    ignore_index: int = Field(
        IGNORE_INDEX,
        ge=-(2**31),
        lt=2**31,
        description="upload, classification: labels equal to this count in "
        "neither loss nor accuracy (per-token labels: padding, a causal LM's last position)",
    )


CKPT = TrainConfig()  # the training defaults, from their one source
Architecture = Literal["mlp", "lenet5", "lenet5_binary", "vgg16", "resnet18", "exported"]


class CheckpointSpecCreate(BaseModel):
    """A checkpoint job: train (or fine-tune an uploaded model) sparse with RVSM / RVSCGD or a baseline.

    The model is a built-in ``architecture`` (with an optional uploaded state_dict) or the user's own,
    uploaded as a ``torch.export`` ``.pt2`` (then ``architecture`` is left out or ``"exported"``). Say the
    sparsity you want with ``target_sparsity``, or set the splitting's ``lam``/``beta`` yourself."""

    model_config = STRICT

    kind: Literal["checkpoint"]
    architecture: Architecture | None = Field(None, description="a built-in, or 'exported' (or unset) for a .pt2")
    hidden: list[Annotated[int, Field(ge=1, le=65536)]] | None = Field(
        None, min_length=1, max_length=32, description="mlp: hidden layer widths (default [128, 128])"
    )
    task: Literal["classification", "regression"] = Field(CKPT.task, description="cross-entropy, or MSE")  # type: ignore[arg-type]
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    algorithm: Literal["sgd", "rvsm", "rvscgd", "admm", "magnitude"] = CKPT.algorithm  # type: ignore[assignment]
    target_sparsity: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="the fraction of zeros the sparsified tensors end with (rvsm, rvscgd, admm, magnitude)",
    )
    sparsity_scope: Literal["global", "layer"] = Field(
        CKPT.sparsity_scope,  # type: ignore[arg-type]
        description="target over all sparsified tensors together, or per tensor",
    )
    warmup_epochs: int | None = Field(
        None,
        ge=0,
        description="rvsm/rvscgd target and gradual magnitude: "
        "dense epochs before pruning starts (default a tenth, rounded up)",
    )
    ramp_epochs: int | None = Field(
        None,
        ge=0,
        description="rvsm/rvscgd target and gradual magnitude: epochs over which the target ramps up (default 40%)",
    )
    penalty: Literal["l0", "l1", "tl1", "group_l1"] = CKPT.penalty  # type: ignore[assignment]
    lam: float = Field(CKPT.lam, ge=0, description="lambda mode: the penalty weight (thresholds mu = lam/beta)")
    beta: float | None = Field(
        None,
        gt=0,
        description="the splitting's coupling; admm's rho. Default: "
        f"{DEFAULT_BETA['lambda']} with lam, {DEFAULT_BETA['target']} with target_sparsity, "
        f"{DEFAULT_BETA['admm']} for admm",
    )
    tail_epochs: int | None = Field(
        None,
        ge=0,
        description="rvsm/rvscgd target: the last epochs train the pruned "
        "network (w <- u) with its zeros held (default a fifth)",
    )
    pruning: Literal["gradual", "one_shot"] | None = Field(
        None,
        description="magnitude: 'gradual' (the default: gradual magnitude pruning on the warm-up and ramp, "
        "the zeros held after) or 'one_shot' (dense training, then one pruning at the end)",
    )
    beta_final: float | None = Field(None, gt=0, description="grow beta to this over the epochs (mu fixed)")
    a: float = Field(CKPT.a, gt=0)
    epochs: int = Field(CKPT.epochs, ge=1)
    optimizer: Literal["sgd", "adamw"] = Field(
        CKPT.optimizer,  # type: ignore[arg-type]
        description="the base step of every algorithm (RVSM / ADMM pull on top of it, fine-tuning too): 'sgd' "
        "(with momentum) or 'adamw' (torch.optim.AdamW: betas (0.9, 0.999) and its own lr / weight_decay defaults)",
    )
    lr: float | None = Field(
        None, gt=0, description=f"default: {DEFAULT_LR['sgd']} (sgd), {DEFAULT_LR['adamw']} (adamw)"
    )
    momentum: float | None = Field(None, ge=0, lt=1, description=f"sgd only (default {SGD_MOMENTUM}); a 422 with adamw")
    weight_decay: float | None = Field(
        None,
        ge=0,
        description=f"default: {DEFAULT_WEIGHT_DECAY['sgd']} (sgd), {DEFAULT_WEIGHT_DECAY['adamw']} (adamw, decoupled)",
    )
    schedule: Literal["constant", "step", "cosine"] = CKPT.schedule  # type: ignore[assignment]
    step_size: int = Field(CKPT.step_size, ge=1)
    gamma: float = Field(CKPT.gamma, gt=0, le=1)
    batch_size: int | None = Field(
        None,
        ge=1,
        le=65536,
        description=f"default: the largest of {BATCH_SIZES} that gives the job at least "
        f"{MIN_STEPS} optimizer steps (epochs + finetune_epochs over the training samples)",
    )
    sparsity: float | None = Field(None, gt=0, lt=1, description="admm / magnitude: the older name of target_sparsity")
    finetune_epochs: int = Field(CKPT.finetune_epochs, ge=0)
    params: list[str] | None = Field(
        None,
        max_length=10_000,
        description="parameter names or glob patterns to sparsify; default: every "
        "convolution and linear weight (for a .pt2, the weights its conv / linear / matmul nodes consume)",
    )
    min_keep: float | None = Field(
        None,
        ge=0,
        lt=1,
        description=f"lambda mode: each sparsified tensor keeps at "
        f"least this fraction of its entries (default {MIN_KEEP}; 0: none)",
    )
    layer_scale: bool = Field(CKPT.layer_scale, description="lambda mode: thresholds in units of each layer's RMS")
    seed: int = Field(CKPT.seed, ge=0, lt=2**63)

    def to_spec(self) -> dict:
        return self.model_dump(exclude_none=True)


class ToyRunResult(BaseModel):
    """One toy run (docs/math.md); non-finite numbers are ``null``."""

    model_config = OPEN

    final: dict[str, Any] = Field(description="w, u, w_star, w0, theta_w, theta_u, f_w, f_u, nnz_u, iters, ...")
    trace: dict[str, list[Any]] = Field(description="columns: iter, lagrangian, theta_w, theta_u, f_w, f_u, ...")
    trace_info: dict[str, Any] = Field(description="log_every used, requested_log_every, max_points, note")
    hypotheses: dict[str, Any] = Field(description="the paper's assumptions, checked on this run")
    bounds: list[dict[str, Any]] = Field(description="each bound: its value, the measured one, whether it held")


class ToySweepRunResult(ToyRunResult):
    config: dict[str, Any] = Field(description="this run's sweep values")
    trace: dict[str, list[Any]] | None = Field(  # type: ignore[assignment]
        None,
        description="absent when the sweep is columnar (columns.inline false): then in runs.safetensors, "
        "and final has d instead of w, u, w_star, w0",
    )


class ToySweepResult(BaseModel):
    """A sweep: one result per configuration, in the sweep's order."""

    model_config = OPEN

    runs: list[ToySweepRunResult]
    columns: dict[str, Any] | None = Field(
        None,
        description="every run's trace and vectors as columns: artifact (runs.safetensors), format, rows, "
        "inline (whether runs also carry them), tensors {name: {dtype, shape}}; see the README",
    )


class CheckpointReport(BaseModel):
    """A checkpoint job's report (also the ``report.json`` artifact). Scores are ``accuracy_*`` for
    classification, ``loss_*`` (validation MSE) for regression."""

    model_config = OPEN

    architecture: str
    task: Literal["classification", "regression"]
    metric: str
    dataset: dict[str, Any]
    algorithm: str
    target_sparsity: float | None
    sparsity_scope: str | None
    from_checkpoint: bool
    normalised: list[str] = Field(description="what was normalised on the way in (prefixes stripped, ...)")
    collapsed: bool = Field(
        description="near chance: under a quarter of the way from the majority label's accuracy "
        "(regression: the mean's MSE) to a perfect score"
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="what the job's owner should know, such as lam past lambda mode's measured cliff",
    )
    sparsity: dict[str, Any] = Field(description="prunable, overall and per tensor")
    sizes: dict[str, int]
    trace: list[dict[str, Any]] = Field(description="one point per epoch")
    epochs: int
    resumed_from_epoch: int | None
    device: str
    wall_time_s: float
    config: dict[str, Any]


RESULT_MODELS = (ToyRunResult, ToySweepResult, CheckpointReport)
