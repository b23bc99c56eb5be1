"""Settings, from the environment (prefix ``RVSM_``) or a ``.env`` file; one cached instance."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RVSM_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("data"), description="where the embedded mode keeps its database and artifacts")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite file in data_dir")
    artifact_dir: Path | None = Field(None, description="artifact files; default: data_dir/artifacts")
    broker_url: str | None = Field(None, description="Celery broker (Redis); unset: `rvsm serve` runs an embedded one")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated bearer keys; empty: no auth"
    )
    admin_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated bearer keys that read every key's figures on /metrics (a scraper's); "
        "nothing else: they are not API keys. Set: /metrics needs a key even with no RVSM_API_KEYS",
    )
    max_iters_cap: int = Field(2_000_000, ge=1, description="largest max_iters a toy job may ask for")
    sweep_cap: int = Field(
        100_000, ge=1, description="largest number of configurations in one sweep, or in one batch of jobs in all"
    )
    max_batch_submit: int = Field(1000, ge=1, description="most jobs one POST /v1/jobs:batch may hold")
    max_upload_bytes: int = Field(256 * 2**20, ge=1, description="largest checkpoint or dataset upload")
    max_spec_bytes: int = Field(
        2**20, ge=1024, description="largest JSON body or multipart 'spec' field (the stored spec's size cap)"
    )
    max_json_depth: int = Field(32, ge=4, le=200, description="deepest nesting of arrays and objects in a JSON spec")
    max_json_containers: int = Field(
        20_000, ge=16, description="most arrays and objects in a JSON spec (bounds the parser's cost per byte)"
    )
    toy_queue: str = Field("cpu", description="Celery queue for toy jobs")
    checkpoint_queue: str = Field("cpu", description="Celery queue for checkpoint jobs (gpu in production)")
    datasets_dir: Path | None = Field(None, description="root of server-side ImageFolder datasets (folder jobs)")
    max_epochs_cap: int = Field(1000, ge=1, description="largest epochs + finetune_epochs of a checkpoint job")
    visibility_timeout_s: int = Field(
        12 * 3600, ge=1, description="Redis visibility timeout: longer than the longest job"
    )
    lease_s: float = Field(60.0, gt=0, description="a running job whose worker is silent this long may be taken over")
    batch_jobs: int = Field(
        256, ge=1, description="most small toy jobs a worker runs together as one batch (1: each job alone)"
    )
    progress_interval_s: float = Field(0.5, gt=0, description="how often a running job writes progress and metrics")
    device: str | None = Field(None, description="torch device for workers; default: cuda when present, else cpu")
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="torch threads a worker runs its jobs with; unset: the cores it may use (its CPU affinity). "
        "Where several workers share a box, give each its share (1 on a 2-core box with two workers)",
    )
    toy_d_cap: int = Field(100_000, ge=1, description="largest d of a toy job (also the length of w_star / w0)")
    toy_k_cap: int = Field(10_000, ge=1, description="largest k (patches) of a toy job")
    toy_samples_cap: int = Field(1_000_000, ge=1, description="largest samples / batch_size of an empirical toy job")
    toy_elements_cap: int = Field(
        2_000_000, ge=1, description="largest configurations x d of a toy job (the batch's vectors)"
    )
    toy_sample_elements_cap: int = Field(
        20_000_000, ge=1, description="largest sum of (samples or batch_size) x k x d over a toy job's empirical runs"
    )
    reaper_interval_s: float = Field(
        10.0, gt=0, description="how often each worker's (and the API's) reconciler repairs jobs from the job store"
    )
    api_reconciler: bool = Field(
        True, description="the API process sweeps the job store too, so lost jobs are requeued with no worker alive"
    )
    max_attempts: int = Field(3, ge=1, description="a job whose worker is lost this many times ends failed")
    dispatch_timeout_s: float = Field(
        60.0, gt=0, description="a queued job unclaimed this long is published again if its message may be lost"
    )
    broker_timeout_s: float = Field(1.0, gt=0, description="longest wait on the broker when publishing or checking")
    api_threads: int = Field(
        40, ge=1, description="threads the API runs blocking endpoints in; the database pool is sized to match"
    )

    @field_validator("api_keys", "admin_keys", mode="before")
    @classmethod
    def _split_keys(cls, v: object, info: ValidationInfo) -> object:
        """``"a,b"`` -> ``["a", "b"]``; a value that is set but holds no key (``" , "``) is an error, never
        an open service."""
        if isinstance(v, str):
            keys = [k.strip() for k in v.split(",") if k.strip()]
            if v and not keys:
                name = f"RVSM_{(info.field_name or '').upper()}"
                raise ValueError(f"{name} is set ({v!r}) but holds no key; unset it to run without auth")
            return keys
        return v

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'rvsm.db').resolve()}"

    @property
    def resolved_artifact_dir(self) -> Path:
        return (self.artifact_dir or self.data_dir / "artifacts").resolve()

    # checkpoint-job caps (issue 9), checked by rvsm.prepare.check before anything is allocated; epochs: max_epochs_cap
    checkpoint_samples_cap: int = Field(1_000_000, ge=2, description="largest data set of a checkpoint job (samples)")
    checkpoint_classes_cap: int = Field(10_000, ge=2, description="most classes (largest label + 1), checkpoint jobs")
    checkpoint_features_cap: int = Field(2**20, ge=1, description="largest sample of a checkpoint job (elements)")
    checkpoint_parameters_cap: int = Field(50_000_000, ge=1, description="largest model of a checkpoint job (params)")
    checkpoint_activations_cap: int = Field(
        2**30, ge=1, description="most elements one forward pass allocates (training or evaluation batch)"
    )
    checkpoint_traffic_cap: int = Field(
        10**10, ge=1, description="most elements one forward pass of an exported graph reads and writes"
    )
    checkpoint_flops_cap: int = Field(
        2 * 10**12, ge=1, description="most floating-point operations in one forward pass of an exported graph"
    )
    checkpoint_nodes_cap: int = Field(5_000, ge=1, description="most nodes in an exported graph")
    # the confined child processes that check uploads (API) and train checkpoint jobs (worker): rvsm.sandbox
    check_memory_bytes: int = Field(3 * 2**30, ge=2**27, description="address space a submit-time check may add")
    check_timeout_s: float = Field(30.0, gt=0, description="wall-clock limit of a submit-time check (seconds)")
    job_memory_bytes: int = Field(16 * 2**30, ge=2**28, description="address space a checkpoint job's child may add")
    job_cpu_s: int = Field(7 * 24 * 3600, ge=1, description="CPU seconds a checkpoint job's child may use")
    sandbox_seccomp: bool = Field(True, description="the children's seccomp filter (off where libseccomp is missing)")

    def toy_limits(self):  # -> rvsm.toy.ToyLimits (imported here, so settings load no torch)
        """The toy caps as the library takes them (the API's checks and the tests read them here)."""
        from rvsm.toy import ToyLimits

        return ToyLimits(
            max_iters=self.max_iters_cap,
            sweep=self.sweep_cap,
            d=self.toy_d_cap,
            k=self.toy_k_cap,
            samples=self.toy_samples_cap,
            elements=self.toy_elements_cap,
            sample_elements=self.toy_sample_elements_cap,
        )

    def checkpoint_limits(self):  # -> rvsm.prepare.CheckpointLimits (imported here, so settings load no torch)
        """The checkpoint caps as the library takes them."""
        from rvsm.prepare import CheckpointLimits

        return CheckpointLimits(
            samples=self.checkpoint_samples_cap,
            classes=self.checkpoint_classes_cap,
            features=self.checkpoint_features_cap,
            parameters=self.checkpoint_parameters_cap,
            activations=self.checkpoint_activations_cap,
            traffic=self.checkpoint_traffic_cap,
            flops=self.checkpoint_flops_cap,
            nodes=self.checkpoint_nodes_cap,
            epochs=self.max_epochs_cap,
        )

    def check_child(self):  # -> rvsm.sandbox.ChildLimits
        """Limits of the child process that runs a submit-time check."""
        from rvsm.sandbox import ChildLimits

        timeout = int(self.check_timeout_s) + 1
        return ChildLimits(
            memory_bytes=self.check_memory_bytes,
            cpu_s=timeout,
            wall_s=self.check_timeout_s,
            seccomp=self.sandbox_seccomp,
        )

    def job_child(self):  # -> rvsm.sandbox.ChildLimits
        """Limits of the child process that trains a checkpoint job (no wall-clock limit: jobs may be long)."""
        import torch

        from rvsm.sandbox import ChildLimits

        threads = torch.get_num_threads()  # what the worker itself runs with (worker.jobs.size_threads)
        return ChildLimits(
            memory_bytes=self.job_memory_bytes,
            cpu_s=self.job_cpu_s,
            wall_s=None,
            threads=threads,
            seccomp=self.sandbox_seccomp,
        )


@lru_cache
def get_settings() -> Settings:
    return Settings()
