"""``/v1/jobs``: submit, list, inspect, follow, fetch results and artifacts, cancel, delete."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobs import states
from jobs.db import Job
from jobs.layout import MEDIA_TYPES, PLOT, input_name, inputs_dir, job_dir, write_atomic
from jobs.queue import enqueue, enqueue_many
from jobs.settings import Settings
from jobs.states import JobState
from rvsm.errors import InputError
from rvsm.prepare import check_isolated
from rvsm.toy import CheckedSpec, SpecError, validate_spec
from rvsm.train import TrainConfig

from ..deps import OwnerDep, SessionDep, SettingsDep, no_unknown_query
from ..errors import field_error, responses
from ..limits import BodyTooLarge, body_cap, is_multipart, json_shape
from ..openapi import ref
from ..plots import artifacts_with_plot
from ..schemas import (
    RESULT_MODELS,
    ArtifactPublic,
    CheckpointSpecCreate,
    JobBatchCreate,
    JobBatchCreated,
    JobCreated,
    JobList,
    JobPublic,
    MetricsPublic,
    Progress,
    ToySpecCreate,
)

M = TypeVar("M", bound=BaseModel)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(no_unknown_query)])


def job_url(request: Request, job_id: str) -> str:
    return str(request.url_for("get_job", job_id=job_id))


def to_public(request: Request, job: Job) -> JobPublic:
    return JobPublic(
        id=job.id,
        kind=job.kind,
        state=job.state,
        url=job_url(request, job.id),
        queue=job.queue,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        progress=progress_of(job),
        attempts=job.attempts,
        cancel_requested=job.cancel_requested,
        error=job.error,
        summary=job.summary,
        spec=job.spec,
    )


def progress_of(job: Job) -> Progress:
    """The job row's progress; for a checkpoint job also epoch / step (``iteration`` and ``max_iters`` count
    optimizer steps there: steps per epoch x epochs, from the submit-time check)."""
    p = Progress(fraction=job.progress, iteration=job.iteration, max_iters=job.max_iters, eta_s=job.eta_s)
    if job.kind != "checkpoint":
        return p
    try:
        epochs = TrainConfig.from_spec(job.spec).total_epochs
    except (ValueError, TypeError):  # a row from an older version: plain progress
        return p
    p.epochs = epochs
    if job.max_iters >= epochs > 0 and job.max_iters % epochs == 0 and job.iteration > 0:
        per_epoch = job.max_iters // epochs
        done_epochs, p.step = divmod(job.iteration, per_epoch)
        p.epoch, p.steps = min(done_epochs + 1, epochs), per_epoch
        if done_epochs == epochs:  # the last step: the last epoch, complete
            p.step = per_epoch
    return p


def checked_toy(spec: dict, settings: Settings, *, field: str = "") -> CheckedSpec:
    """Every rule and cap of a toy spec, by :func:`rvsm.toy.validate_spec` (the caps on the raw spec
    first, no vector built), as a 422 naming the field (under ``field``, a batch's ``jobs.<i>``). Returns its
    configurations and largest ``max_iters``."""
    limits = settings.toy_limits()
    try:
        return validate_spec(spec, limits=limits)
    except SpecError as e:
        raise field_error(f"{field}.{e.field}" if field else e.field, e.rule) from None


def find(session: SessionDep, owner: str | None, job_id: str) -> Job:
    job = states.get_job(session, job_id, owner)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"job_id: no job {job_id!r}")
    return job


TOY_EXAMPLE = {
    "kind": "toy",
    "k": 4,
    "d": 20,
    "lam": 0.05,
    "beta": 0.1,
    "eta": 0.1,
    "max_iters": 2000,
    "teacher": {"seed": 0, "sparsity": 5},
    "sweep": {"lam": [0.01, 0.05]},
}
CHECKPOINT_EXAMPLE = {
    "kind": "checkpoint",
    "architecture": "mlp",
    "dataset": {"name": "digits"},
    "algorithm": "rvsm",
    "target_sparsity": 0.9,
    "epochs": 5,
}


def _body_schema() -> dict:
    spec = {"oneOf": [ref(ToySpecCreate), ref(CheckpointSpecCreate)]}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": spec,
                    "examples": {"toy": {"value": TOY_EXAMPLE}, "checkpoint": {"value": CHECKPOINT_EXAMPLE}},
                },
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["spec"],
                        "properties": {
                            "spec": {"type": "string", "description": "the job spec as JSON text"},
                            "checkpoint": {
                                "type": "string",
                                "format": "binary",
                                "description": "a torch.export .pt2 (any architecture), or "
                                ".safetensors / a .pt state_dict of a built-in",
                            },
                            "dataset": {
                                "type": "string",
                                "format": "binary",
                                "description": ".safetensors or .npz: x (or x.<input>), y[, x_val, y_val]",
                            },
                        },
                        "additionalProperties": False,
                    },
                    "example": {"spec": json.dumps(CHECKPOINT_EXAMPLE)},
                },
            },
        }
    }


def _result_schema() -> dict:
    schema = {"anyOf": [ref(m) for m in RESULT_MODELS]}
    return {
        200: {
            "description": "a toy result, a sweep's results or a checkpoint report",
            "content": {"application/json": {"schema": schema}},
        }
    } | responses(401, 404, 409)


def _invalid(errors: Sequence[Mapping], prefix: tuple = ("body",)) -> RequestValidationError:
    return RequestValidationError([dict(e) | {"loc": (*prefix, *e.get("loc", ()))} for e in errors])


def _load_json(text: str | bytes, prefix: tuple, settings: Settings) -> object:
    """Parse a spec's JSON text (off the event loop): 413 over ``max_spec_bytes``; 422 when it nests deeper
    than ``max_json_depth``, holds more than ``max_json_containers`` arrays and objects (both checked on the
    text before the parser builds anything) or is not JSON."""
    data = text.encode() if isinstance(text, str) else text
    if len(data) > settings.max_spec_bytes:
        raise _too_large(".".join(prefix[1:]) or "body", settings.max_spec_bytes)
    depth, containers = json_shape(data)
    rule = None
    if depth > settings.max_json_depth:
        rule = f"JSON nested deeper than {settings.max_json_depth} levels of arrays and objects"
    elif containers > settings.max_json_containers:
        rule = f"JSON with more than {settings.max_json_containers} arrays and objects (got {containers})"
    if rule is None:
        try:
            return json.loads(data)
        except RecursionError:  # not reached for valid JSON (the depth cap is far below the parser's)
            rule = "JSON nested too deeply"
        except ValueError as e:
            rule = f"JSON decode error: {e}"
    raise _invalid([{"type": "json_invalid", "loc": (), "msg": rule}], prefix)


def _parse_spec(raw: object, prefix: tuple) -> ToySpecCreate | CheckpointSpecCreate:
    if not isinstance(raw, dict):
        raise _invalid([{"type": "model_type", "loc": (), "msg": "the spec must be a JSON object"}], prefix)
    if raw.get("kind") == "checkpoint":
        return _validated(CheckpointSpecCreate, raw, prefix)
    return _validated(ToySpecCreate, raw, prefix)


def _validated(model: type[M], raw: object, prefix: tuple = ("body",)) -> M:
    """``raw`` as ``model``, or a 422 naming each field at its place under ``prefix``."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise _invalid(e.errors(include_url=False, include_context=False, include_input=False), prefix) from None


def _spec_of(text: str | bytes, prefix: tuple, settings: Settings) -> ToySpecCreate | CheckpointSpecCreate:
    return _parse_spec(_load_json(text, prefix, settings), prefix)


def _too_large(what: str, cap: int) -> HTTPException:
    return HTTPException(
        status.HTTP_413_CONTENT_TOO_LARGE, detail=f"{what}: larger than this service accepts ({cap} bytes)"
    )


async def _read_form(request: Request, settings: Settings) -> tuple[str | bytes, dict[str, bytes]]:
    """The multipart body: the ``spec`` text and the uploads (the body is cut at its cap while it streams)."""
    cap = settings.max_upload_bytes
    try:
        form = await request.form(max_files=2, max_fields=4, max_part_size=settings.max_spec_bytes)
    except StarletteHTTPException as e:
        if "exceeded maximum size" in str(e.detail):  # a text field (spec) over the cap: starlette says 400
            raise _too_large("spec", settings.max_spec_bytes) from None
        raise
    unknown = sorted(set(form) - {"spec", "checkpoint", "dataset"})
    if unknown:
        raise field_error(unknown[0], "unknown form field (allowed: spec, checkpoint, dataset)")
    text = form.get("spec")
    if not isinstance(text, str):
        raise field_error("spec", "a multipart job needs a 'spec' field holding the JSON spec")
    files: dict[str, bytes] = {}
    for name in ("checkpoint", "dataset"):
        part = form.get(name)
        if part is None:
            continue
        if isinstance(part, str):
            raise field_error(name, "must be a file upload")
        if part.size is not None and part.size > cap:
            raise _too_large(name, cap)
        files[name] = await part.read()
        files[f"{name}.filename"] = (part.filename or "").encode()
    return text, files


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobCreated,
    openapi_extra=_body_schema(),
    responses=responses(400, 401, 413, 422, 503, 507),
)
async def submit_job(request: Request, session: SessionDep, settings: SettingsDep, owner: OwnerDep):
    """Submit a job: a toy spec (docs/math.md) as JSON, or a checkpoint job as JSON (trains from scratch) or as
    multipart with the ``spec`` JSON text, a ``checkpoint`` file and, for ``dataset.name = upload``, a
    ``dataset`` file. 202 with the job's id; follow it at ``url``. Bodies are cut at their cap while they
    stream (413); JSON parsing and validation run off the event loop."""
    content_type = request.headers.get("content-type", "")
    _refuse_declared_over(request, body_cap(settings, content_type))
    if is_multipart(content_type):
        text, files = await _read_form(request, settings)
        prefix: tuple = ("body", "spec")
    else:
        text, files, prefix = await request.body(), {}, ("body",)
    body = await run_in_threadpool(_spec_of, text, prefix, settings)
    return await run_in_threadpool(_create, body, files, request, session, settings, owner)


BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": ref(JobBatchCreate),
                "examples": {"two toy jobs": {"value": {"jobs": [TOY_EXAMPLE, TOY_EXAMPLE | {"lam": 0.1}]}}},
            }
        },
    }
}


@router.post(
    ":batch",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobBatchCreated,
    openapi_extra=BATCH_BODY,
    responses=responses(401, 413, 422, 503),
)
async def submit_batch(request: Request, session: SessionDep, settings: SettingsDep, owner: OwnerDep):
    """Submit many toy jobs in one request: ``{"jobs": [spec, ...]}``, each spec as ``POST /v1/jobs`` takes it.
    202 with one id per spec, in order; far cheaper than one request per job (a sweep is cheaper still). Every
    spec is checked before any job is stored, and one bad spec refuses the lot (422 naming
    ``jobs.<i>.<field>``): at most ``RVSM_MAX_BATCH_SUBMIT`` jobs and ``RVSM_SWEEP_CAP`` configurations in all.
    JSON only: a checkpoint job uploads files, one request each."""
    if is_multipart(request.headers.get("content-type", "")):
        raise field_error("body", 'a batch is a JSON document {"jobs": [toy spec, ...]}, not a multipart form')
    _refuse_declared_over(request, settings.max_spec_bytes)
    text = await request.body()
    body = await run_in_threadpool(_batch_of, text, settings)
    return await run_in_threadpool(_create_batch, body, request, session, settings, owner)


def _batch_of(text: bytes, settings: Settings) -> JobBatchCreate:
    """The batch, parsed as a spec is (bounded), its count capped before pydantic builds any spec."""
    raw = _load_json(text, ("body",), settings)
    jobs = raw.get("jobs") if isinstance(raw, dict) else None
    if isinstance(jobs, list):
        if len(jobs) > settings.max_batch_submit:
            raise field_error("jobs", f"{len(jobs)} specs, over the cap of {settings.max_batch_submit} a batch")
        for i, spec in enumerate(jobs):
            if isinstance(spec, dict) and spec.get("kind") == "checkpoint":
                raise field_error(f"jobs.{i}.kind", "a batch holds toy jobs; submit a checkpoint job alone")
    return _validated(JobBatchCreate, raw)


def _refuse_declared_over(request: Request, cap: int) -> None:
    """A 413 before reading a body whose declared ``content-length`` is over ``cap`` (the stream is cut at the cap
    in any case: :class:`service.limits.BodyLimit`)."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > cap:
        raise BodyTooLarge(cap)


def _create_batch(
    body: JobBatchCreate, request: Request, session: SessionDep, settings: SettingsDep, owner: str | None
) -> JobBatchCreated:
    specs = [spec.to_spec() for spec in body.jobs]
    checked = [checked_toy(spec, settings, field=f"jobs.{i}") for i, spec in enumerate(specs)]
    configs = sum(c.configs for c in checked)
    if configs > settings.sweep_cap:
        raise field_error("jobs", f"{configs} configurations in all, over the cap of {settings.sweep_cap}")
    jobs = states.new_jobs(
        session,
        kind="toy",
        specs=[(spec, c.max_iters) for spec, c in zip(specs, checked, strict=True)],
        owner=owner,
        queue=settings.toy_queue,
        dispatch_s=settings.dispatch_timeout_s,
    )
    try:
        enqueue_many(settings, [j.id for j in jobs], settings.toy_queue)
    except Exception as e:  # the broker is down or hung: keep none of them (a message already sent finds no row)
        for job in jobs:
            states.delete_job(session, job)
        raise queue_unreachable(e) from None
    items = [JobCreated(id=j.id, state=j.state, url=job_url(request, j.id)) for j in jobs]
    return JobBatchCreated(items=items)


def _create(
    body: ToySpecCreate | CheckpointSpecCreate,
    files: dict[str, bytes],
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    owner: str | None,
) -> JobCreated:
    spec = body.to_spec()
    if isinstance(body, ToySpecCreate):
        if files:
            raise field_error(next(iter(files)).split(".")[0], "toy jobs take no files")
        max_iters = checked_toy(spec, settings).max_iters
        kind, queue = "toy", settings.toy_queue
    else:
        max_iters = validate_checkpoint_job(body, files, settings)
        kind, queue = "checkpoint", settings.checkpoint_queue
        spec["has_checkpoint"] = "checkpoint" in files
        spec["has_dataset_file"] = "dataset" in files
    # committed before the publish: a crash between the two leaves a queued row the reconciler publishes
    job = states.new_job(
        session,
        kind=kind,
        spec=spec,
        owner=owner,
        queue=queue,
        max_iters=max_iters,
        dispatch_s=settings.dispatch_timeout_s,
    )
    try:
        _store_inputs(settings, job.id, files)
    except OSError as e:  # a full (or failing) disk: the row goes too, so no job without its inputs is ever seen
        _forget(session, settings, job)
        raise storage_error(e) from None
    try:
        enqueue(settings, job.id, job.queue)
    except Exception as e:  # the broker is down or hung (bounded wait): say so, keep nothing half-queued
        _forget(session, settings, job)
        raise queue_unreachable(e) from None
    return JobCreated(id=job.id, state=job.state, url=job_url(request, job.id))


def queue_unreachable(e: Exception) -> HTTPException:
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE, detail=f"the job queue is unreachable; try again ({type(e).__name__})"
    )


def _store_inputs(settings: SettingsDep, job_id: str, files: dict[str, bytes]) -> None:
    inputs = inputs_dir(settings.resolved_artifact_dir, job_id)
    for name in ("checkpoint", "dataset"):
        if name in files:
            write_atomic(inputs / input_name(name, files[f"{name}.filename"].decode()), files[name])


def _forget(session: SessionDep, settings: SettingsDep, job: Job) -> None:
    """Undo a submit that cannot complete: the row and whatever of its inputs reached the disk."""
    states.delete_job(session, job)
    shutil.rmtree(job_dir(settings.resolved_artifact_dir, job.id), ignore_errors=True)


def storage_error(e: OSError) -> HTTPException:
    """507 for a full disk or quota, 503 for another failure to write: the JSON error shape, the OS's reason."""
    full = e.errno in (errno.ENOSPC, errno.EDQUOT)
    why = os.strerror(e.errno) if e.errno else type(e).__name__
    return HTTPException(
        status.HTTP_507_INSUFFICIENT_STORAGE if full else status.HTTP_503_SERVICE_UNAVAILABLE,
        detail=f"the upload could not be stored ({why}); nothing was kept, try again later",
    )


def validate_checkpoint_job(body: CheckpointSpecCreate, files: dict[str, bytes], settings: SettingsDep) -> int:
    """Everything a worker would trip over, checked now by the code the worker runs (:func:`rvsm.prepare.check`),
    in a confined child process (an uploaded graph never runs in the API's): the training config, every cap
    (before anything is allocated), the data set, the model (on meta, or faked), the checkpoint. Returns the
    optimizer steps the job will run (the job's ``max_iters``: a toy job's are its iterations)."""
    spec = body.to_spec()
    if ("dataset" in files) != (body.dataset.name == "upload"):
        raise field_error("dataset", "send a 'dataset' file exactly when dataset.name is 'upload'")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            upload = None
            if "dataset" in files:
                upload = Path(tmp) / input_name("dataset", files["dataset.filename"].decode())
                try:
                    upload.write_bytes(files["dataset"])
                except OSError as e:
                    raise storage_error(e) from None
            summary = check_isolated(
                spec,
                child=settings.check_child(),
                limits=settings.checkpoint_limits(),
                checkpoint=files.get("checkpoint"),
                dataset_file=upload,
                datasets_dir=settings.datasets_dir,
                max_bytes=settings.max_upload_bytes,
            )
    except InputError as e:
        raise field_error(e.field, e.rule) from None
    return int(summary["steps"])


@router.get("", response_model=JobList, responses=responses(401, 422))
def list_jobs(
    request: Request,
    session: SessionDep,
    owner: OwnerDep,
    state: JobState | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, lt=2**63)] = 0,
):
    """Jobs, newest first."""
    rows, total = states.list_jobs(session, owner=owner, state=state, limit=limit, offset=offset)
    return JobList(items=[to_public(request, j) for j in rows], total=total, limit=limit, offset=offset)


@router.get("/{job_id}", response_model=JobPublic, responses=responses(401, 404))
def get_job(job_id: str, request: Request, session: SessionDep, owner: OwnerDep):
    """State, progress (iteration of max, ETA), timestamps, attempts, error."""
    return to_public(request, find(session, owner, job_id))


@router.get("/{job_id}/metrics", response_model=MetricsPublic, responses=responses(401, 404, 422))
def get_metrics(
    job_id: str,
    session: SessionDep,
    owner: OwnerDep,
    since: Annotated[int, Query(ge=0, lt=2**63, description="only points after this seq")] = 0,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
):
    """The trace so far, also while running; ``?since=`` returns only newer points."""
    job = find(session, owner, job_id)
    points = states.metric_points(session, job.id, since, limit)
    data = [{"seq": p.seq} | p.data for p in points]
    return MetricsPublic(job_id=job.id, state=job.state, points=data, next_since=points[-1].seq if points else since)


@router.get("/{job_id}/result", responses=_result_schema())
def get_result(job_id: str, session: SessionDep, owner: OwnerDep, settings: SettingsDep) -> Response:
    """The result document (final report, trace, hypotheses, bounds, sparse weights); 409 until succeeded."""
    job = find(session, owner, job_id)
    if job.state != "succeeded" or not job.result_path:
        raise HTTPException(
            status.HTTP_409_CONFLICT, detail=f"state: the job is {job.state}; a result exists once it has succeeded"
        )
    path = settings.resolved_artifact_dir / job.result_path
    return Response(content=path.read_bytes(), media_type="application/json")


@router.get("/{job_id}/artifacts", response_model=list[ArtifactPublic], responses=responses(401, 404))
def list_artifacts(job_id: str, request: Request, session: SessionDep, owner: OwnerDep, settings: SettingsDep):
    """Files the job produced, each with its size and sha256 (a toy job's plot is drawn on the first ask)."""
    job = find(session, owner, job_id)
    rows = artifacts_with_plot(session, settings.resolved_artifact_dir, job, states.artifacts(session, job.id))
    return [
        ArtifactPublic(
            name=a.name,
            size=a.size,
            sha256=a.sha256,
            media_type=a.media_type,
            url=str(request.url_for("get_artifact", job_id=job.id, name=a.name)),
        )
        for a in rows
    ]


def _artifact_responses() -> dict:
    binary = {"schema": {"type": "string", "format": "binary"}}
    content = {media: binary for media in sorted(set(MEDIA_TYPES.values()))}
    return {
        200: {"description": "the file (its media type is in the artifact list)", "content": content},
        **responses(401, 404),
    }


@router.get("/{job_id}/artifacts/{name}", responses=_artifact_responses())
def get_artifact(job_id: str, name: str, session: SessionDep, owner: OwnerDep, settings: SettingsDep):
    """One artifact file; its sha256 is in the ``X-Content-SHA256`` header (a toy job's plot: drawn on the
    first ask, then served from its file)."""
    job = find(session, owner, job_id)
    rows = states.artifacts(session, job.id)
    if name == PLOT:
        rows = artifacts_with_plot(session, settings.resolved_artifact_dir, job, rows)
    for a in rows:
        if a.name == name:
            return FileResponse(
                settings.resolved_artifact_dir / a.path,
                media_type=a.media_type,
                filename=a.name,
                headers={"X-Content-SHA256": a.sha256},
            )
    raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"name: job {job.id} has no artifact {name!r}")


@router.post("/{job_id}/cancel", response_model=JobPublic, responses=responses(401, 404))
def cancel_job(job_id: str, request: Request, session: SessionDep, owner: OwnerDep):
    """Cancel: a queued job at once, a running one between iterations. A finished job is left as it is."""
    job = states.request_cancel(session, find(session, owner, job_id))
    return to_public(request, job)


@router.delete("/{job_id}", status_code=status.HTTP_204_NO_CONTENT, responses=responses(401, 404))
def delete_job(job_id: str, session: SessionDep, owner: OwnerDep, settings: SettingsDep) -> Response:
    """Delete a job, its trace and its artifacts (a running job is stopped at its next check)."""
    job = find(session, owner, job_id)
    states.delete_job(session, job)
    shutil.rmtree(job_dir(settings.resolved_artifact_dir, job_id), ignore_errors=True)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
