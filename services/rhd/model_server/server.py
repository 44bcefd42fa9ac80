"""The embedded stand-in for TensorFlow Serving: its gRPC PredictionService, ModelService.GetModelStatus and
health service over a `<models_dir>/<name>/<version>/` SavedModel tree, with TF Serving's model config file,
server-side batching and Prometheus metrics on the REST port; production runs `tensorflow/serving` with the same
files (compose/tfserving/)."""

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import tensorflow as tf
from aiohttp import web
from google.protobuf import any_pb2, text_format
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import Histogram
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from rhd.modelstore import check_saved_model, promotions, versions
from rhd.runtime.http import TFS_METRICS_PATH, start_http
from rhd.v1 import tfs_config_pb2

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
HEALTH_SERVICES = ("", "tensorflow.serving.PredictionService")
# gRPC's 4 MiB default is too small for a batch of frames (32 x 240 x 320 x 3 is 7 MiB); TF Serving lifts it too.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024

PREDICT_BATCH = Histogram(
    "rhd_model_server_batch_size",
    "Rows in each signature call of the embedded model server (with batching on, the merged batch), by model.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
BATCH_WAIT = Histogram(
    "rhd_model_server_batch_wait_seconds",
    "How long each Predict request waited in the batch queue before its batch ran, by model.",
    ["model"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
)

REQUEST_SECONDS = Histogram(
    "rhd_model_server_request_seconds",
    "Requests the embedded model server answered, from arrival to answer, by the model asked for, method (Predict, "
    "GetModelMetadata, GetModelStatus) and gRPC status (OK, NOT_FOUND, ...).",
    ["model", "method", "code"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# TensorFlow's error codes are gRPC's status codes, number for number.
_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}

_M = TypeVar("_M", bound=Message)
_R = TypeVar("_R")


class ServingError(Exception):
    """A request the server answers with this gRPC status instead of a response."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class BatchingOptions:
    """TF Serving's BatchingParameters as this server honours them. A field the file leaves out takes TensorFlow's
    default (SharedBatchScheduler::Options, QueueOptions), as it does in tensorflow/serving."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    thread_pool_name: str = "model_server_batch_threads"

    def __post_init__(self) -> None:
        # TensorFlow refuses these at start, in these words.
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive; was {getattr(self, name)}")
        if self.batch_timeout_micros < 0:
            raise ValueError(f"batch_timeout_micros must be non-negative; was {self.batch_timeout_micros}")


def _read_text_proto(path: Path, message: _M) -> _M:
    """Protobuf text format, as tensorflow/serving reads its config files (`#` starts a comment)."""
    try:
        return text_format.Parse(Path(path).read_text(), message)
    except text_format.ParseError as exc:
        raise ValueError(f"{path}: {exc}") from None


def read_batching_parameters(path: Path) -> BatchingOptions:
    """TF Serving's --batching_parameters_file: a text-format BatchingParameters (rhd/v1/tfs_config.proto)."""
    params = _read_text_proto(path, tfs_config_pb2.BatchingParameters())
    honoured = [f.name for f in fields(BatchingOptions)]
    # Padding, allowed sizes and splitting change what a batch is; ignoring them would serve a different model.
    unsupported = sorted(f.name for f, _ in params.ListFields() if f.name not in honoured)
    if unsupported:
        raise ValueError(f"{path}: {', '.join(unsupported)}: understood by tensorflow/serving, not by rhd model-server")
    return BatchingOptions(**{name: getattr(params, name).value for name in honoured if params.HasField(name)})


def read_model_config(path: Path) -> model_server_config_pb2.ModelServerConfig:
    """TF Serving's --model_config_file: a text-format tensorflow.serving.ModelServerConfig."""
    return _read_text_proto(path, model_server_config_pb2.ModelServerConfig())


def read_monitoring_config(path: Path) -> tfs_config_pb2.MonitoringConfig:
    """TF Serving's --monitoring_config_file: a text-format MonitoringConfig (rhd/v1/tfs_config.proto). A path that
    cannot be a route, or that would hide the health endpoints, is refused at start rather than never answering."""
    config = _read_text_proto(path, tfs_config_pb2.MonitoringConfig())
    metrics = config.prometheus_config.path
    if metrics and (not metrics.startswith("/") or metrics in ("/healthz", "/readyz")):
        raise ValueError(
            f"{path}: prometheus_config path {metrics!r}: expected an absolute path other than /healthz and /readyz"
        )
    return config


def read_ssl_config(path: Path) -> tfs_config_pb2.SSLConfig:
    """TF Serving's --ssl_config_file: a text-format SSLConfig (rhd/v1/tfs_config.proto), PEM texts inline."""
    config = _read_text_proto(path, tfs_config_pb2.SSLConfig())
    if not (config.server_key and config.server_cert):
        raise ValueError(f"{path}: server_key and server_cert are both needed")
    if config.client_verify and not config.custom_ca:
        raise ValueError(f"{path}: client_verify needs custom_ca")
    return config


def metrics_path(config: tfs_config_pb2.MonitoringConfig | None) -> str | None:
    """Where the REST port answers Prometheus metrics: the config's path when it enables them (TF Serving's default
    when it names none), nowhere when it leaves them off. Without any config tensorflow/serving serves none; this
    server serves them at the default path, so the embedded stack can be scraped without a file to write."""
    if config is None:
        return TFS_METRICS_PATH
    prometheus = config.prometheus_config
    return (prometheus.path or TFS_METRICS_PATH) if prometheus.enable else None


def _has_batch_axis(signature: tf.types.experimental.ConcreteFunction) -> bool:
    """Every input and output is [None, ...]: requests stack along axis 0 and the answers split again."""
    inputs = list(signature.structured_input_signature[1].values())
    outputs = tf.nest.flatten(signature.structured_outputs)
    return bool(inputs) and all(spec.shape.rank and spec.shape[0] is None for spec in inputs + outputs)


class Servable:
    """One loaded model version: the restored SavedModel, its signature defs as GetModelMetadata reports, and which
    of its signatures may be batched."""

    def __init__(self, name: str, version: int, path: Path) -> None:
        self.name, self.version = name, version
        check_saved_model(path)  # the files its manifest recorded at export, or it is not served
        self.model = tf.saved_model.load(str(path))
        saved = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
        self.signature_defs = saved.meta_graphs[0].signature_def
        self.batchable = {key: _has_batch_axis(signature) for key, signature in self.model.signatures.items()}


def _loadable(base: Path) -> list[int]:
    """The numeric version folders under base that hold a SavedModel, oldest first."""
    return [v for v in versions(base.parent, base.name) if (base / str(v) / "saved_model.pb").is_file()]


def load_models(models_dir: Path, names: list[str] | None = None) -> dict[str, dict[int, Servable]]:
    """Every loadable version of the named models, or of every model found: without a model config file this server
    serves all versions, unlike tensorflow/serving, whose default version policy is latest 1."""
    root = Path(models_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"models directory {root} does not exist; run `make models`")
    servables: dict[str, dict[int, Servable]] = {}
    for name in names or sorted(p.name for p in root.iterdir() if p.is_dir()):
        loadable = _loadable(root / name)
        if not loadable:
            if names:
                raise FileNotFoundError(f"no SavedModel versions of model {name!r} under {root / name}")
            continue  # other artefacts (scikit-learn models) share the tree
        servables[name] = {v: Servable(name, v, root / name / str(v)) for v in loadable}
        log.info("loaded model %s versions %s", name, loadable)
    if not servables:
        raise FileNotFoundError(f"no SavedModel under {root}/<name>/<version>/; run `make models`")
    return servables


def policy_versions(model: model_server_config_pb2.ModelConfig, loadable: list[int]) -> list[int]:
    """The versions a model_version_policy picks from the loadable ones; latest 1 when it gives none (TF Serving's)."""
    policy = model.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return loadable
    if choice == "specific":
        return [v for v in loadable if v in policy.specific.versions]
    return loadable[-max(policy.latest.num_versions, 1) :]  # TF Serving reads num_versions 0 as 1


def load_configured_models(
    config: model_server_config_pb2.ModelServerConfig, models_dir: Path
) -> dict[str, dict[int, Servable]]:
    """The models of a model config, each at the versions its policy picks; a relative base_path is under models_dir.
    A model with nothing to serve stops the start: serving part of a configuration would hide the mistake."""
    models = config.model_config_list.config
    if not models:
        raise ValueError("the model config names no model: expected model_config_list { config { ... } }")
    servables: dict[str, dict[int, Servable]] = {}
    for model in models:
        if not model.name or not model.base_path:
            raise ValueError(
                f"model config {text_format.MessageToString(model, as_one_line=True)}: name and base_path are required"
            )
        if model.name in servables:
            raise ValueError(f"model {model.name!r} is named twice in the model config")
        if model.model_platform != "tensorflow":
            raise ValueError(
                f"model {model.name!r}: model_platform {model.model_platform!r}; "
                'rhd model-server serves "tensorflow" SavedModels only'
            )
        base = Path(models_dir) / model.base_path  # an absolute base_path replaces models_dir
        loadable = _loadable(base)
        chosen = policy_versions(model, loadable)
        if not chosen:
            policy = text_format.MessageToString(model.model_version_policy, as_one_line=True) or "latest 1 (default)"
            raise FileNotFoundError(
                f"model {model.name!r}: no SavedModel version under {base} for version policy "
                f"{policy}; SavedModel versions there: {loadable}"
            )
        servables[model.name] = {v: Servable(model.name, v, base / str(v)) for v in chosen}
        log.info("loaded model %s versions %s from %s", model.name, chosen, base)
    return servables


def _requested_version(spec: model_pb2.ModelSpec) -> int:
    """The version asked for; 0 when the latest is."""
    if not spec.name:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    if spec.WhichOneof("version_choice") == "version_label":
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT, f"Unrecognized servable version label: {spec.version_label}"
        )
    return spec.version.value if spec.HasField("version") else 0


PROMOTIONS_TTL_S = 2.0  # how stale the promoted versions may be


class ModelRepository:
    """The loaded servables. With `models_dir` (no model config file), a request for the latest version gets the
    version promoted to serve (models/promotions.json, re-read every PROMOTIONS_TTL_S), loaded on first use when it
    was trained after this server started; a version asked for by number is served as it is."""

    def __init__(self, servables: dict[str, dict[int, Servable]], models_dir: Path | None = None) -> None:
        self.servables = servables
        self.models_dir = models_dir
        self._promoted: tuple[float, dict[str, Any]] = (0.0, {})

    def promoted(self, name: str) -> int | None:
        if self.models_dir is None:
            return None
        read_at, known = self._promoted
        if time.monotonic() - read_at > PROMOTIONS_TTL_S:
            known = {n: entry.get("serving") for n, entry in promotions(self.models_dir).items()}
            self._promoted = (time.monotonic(), known)
        version = known.get(name)
        return int(version) if version else None

    def find(self, spec: model_pb2.ModelSpec) -> Servable:
        version = _requested_version(spec)
        loaded = self.servables.get(spec.name, {})
        promoted = None if version else self.promoted(spec.name)
        if promoted and promoted not in loaded and self.models_dir is not None:
            path = self.models_dir / spec.name / str(promoted)
            if (path / "saved_model.pb").is_file():
                log.info("loading model %s version %d: promoted to serve", spec.name, promoted)
                loaded[promoted] = Servable(spec.name, promoted, path)
                self.servables[spec.name] = loaded
        chosen = version or promoted or max(loaded, default=0)
        if chosen not in loaded:
            request = f"Specific({spec.name}, {version})" if version else f"Latest({spec.name})"
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request}")
        return loaded[chosen]


def _dtype_name(enum: int) -> str:
    try:
        return tf.dtypes.as_dtype(enum).name
    except TypeError:
        return f"unknown dtype {enum}"


def _inputs(
    signature: tf.types.experimental.ConcreteFunction, name: str, tensors: Mapping[str, tensor_pb2.TensorProto]
) -> dict[str, np.ndarray]:
    specs = signature.structured_input_signature[1]
    if set(tensors) != set(specs):
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"inputs do not match signature {name}: sent extra {sorted(set(tensors) - set(specs))}, "
            f"missing but required {sorted(set(specs) - set(tensors))}",
        )
    inputs = {}
    for key, spec in specs.items():
        proto = tensors[key]
        if proto.dtype != spec.dtype.as_datatype_enum:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input {key}: expects {spec.dtype.name} but {_dtype_name(proto.dtype)} is provided",
            )
        try:
            array = tf.make_ndarray(proto)
        except (TypeError, ValueError) as exc:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"input {key}: malformed tensor: {exc}") from None
        if not spec.shape.is_compatible_with(array.shape):
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input {key}: expects shape {spec.shape.as_list()}, got {list(array.shape)}",
            )
        inputs[key] = array
    return inputs


@dataclass(frozen=True)
class _Call:
    """One Predict request checked against its signature and decoded: what a signature call needs of it."""

    servable: Servable
    signature: str
    inputs: dict[str, np.ndarray]
    outputs: list[str]

    @property
    def batchable(self) -> bool:
        return self.servable.batchable[self.signature]

    @property
    def rows(self) -> int:
        """Rows along the batch axis, which every input must agree on to be batched (as in TF Serving)."""
        counts = {array.shape[0] for array in self.inputs.values()}
        if len(counts) != 1:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, "Batching Run() input tensors must have equal 0th-dimension size"
            )
        return counts.pop()

    @property
    def batch_key(self) -> tuple:
        """Calls merge only with calls of the same servable and signature whose inputs match apart from axis 0."""
        shapes = tuple((key, array.dtype.str, array.shape[1:]) for key, array in sorted(self.inputs.items()))
        return self.servable.name, self.servable.version, self.signature, shapes


def _prepare(servable: Servable, request: predict_pb2.PredictRequest) -> _Call:
    """Check a request against its signature and decode its tensors; blocking, so it runs in a worker thread."""
    name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    if name not in servable.model.signatures:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT, f'Serving signature name: "{name}" not found in signature def'
        )
    signature = servable.model.signatures[name]
    inputs = _inputs(signature, name, request.inputs)
    known = sorted(signature.structured_outputs)
    wanted = list(request.output_filter) or known
    for key in wanted:
        if key not in known:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"output tensor alias not found in signature: {key}; outputs are {known}",
            )
    return _Call(servable, name, inputs, wanted)


def _split(outputs: dict[str, np.ndarray], rows: list[int]) -> list[dict[str, np.ndarray]]:
    """Each request's rows of every output of a merged call."""
    for array in outputs.values():
        if array.ndim == 0 or array.shape[0] != sum(rows):
            raise ServingError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "Batched output tensor's 0th dimension does not equal the sum of the 0th dimension "
                "sizes of the input tensors",
            )
    bounds = np.cumsum([0, *rows])
    spans = zip(bounds[:-1], bounds[1:], strict=True)
    return [{key: array[start:stop] for key, array in outputs.items()} for start, stop in spans]


def _response(call: _Call, outputs: Mapping[str, np.ndarray]) -> predict_pb2.PredictResponse:
    response = predict_pb2.PredictResponse()
    response.model_spec.name = call.servable.name
    response.model_spec.version.value = call.servable.version
    response.model_spec.signature_name = call.signature
    for key in call.outputs:
        response.outputs[key].CopyFrom(tf.make_tensor_proto(outputs[key]))
    return response


def _run(calls: list[_Call]) -> list[predict_pb2.PredictResponse]:
    """One signature call for one request or a merged batch of them: concatenate along axis 0, run, split by each
    request's rows, encode. Blocking, so it runs off the event loop."""
    first = calls[0]
    if len(calls) == 1:
        inputs = first.inputs
    else:
        inputs = {key: np.concatenate([call.inputs[key] for call in calls]) for key in first.inputs}
    leading = next(iter(inputs.values()), None)
    if leading is not None and leading.ndim:
        PREDICT_BATCH.labels(first.servable.name).observe(leading.shape[0])
    try:
        outputs = first.servable.model.signatures[first.signature](**inputs)
    except tf.errors.OpError as err:
        raise ServingError(_GRPC_CODES.get(err.error_code, grpc.StatusCode.UNKNOWN), err.message) from None
    arrays = {key: value.numpy() for key, value in outputs.items()}
    if len(calls) == 1:
        return [_response(first, arrays)]
    parts = _split(arrays, [call.rows for call in calls])
    return [_response(call, part) for call, part in zip(calls, parts, strict=True)]


def _predict(servable: Servable, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
    """A request alone, decode to encode, in one worker thread."""
    return _run([_prepare(servable, request)])[0]


@dataclass(eq=False)
class _Task:
    payload: Any
    rows: int
    future: asyncio.Future
    enqueued_at: float = field(default_factory=time.perf_counter)


@dataclass(eq=False)
class _Batch:
    tasks: list[_Task] = field(default_factory=list)
    rows: int = 0
    # Set once no further task fits: the batch need not wait out batch_timeout_micros.
    full: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(eq=False)
class _Queue:
    waiting: list[_Batch] = field(default_factory=list)  # formed, not yet running; the open batch is the last
    open: _Batch | None = None


class BatchScheduler:
    """TF Serving's shared batch scheduler: one queue per key (servable, signature, input shapes but axis 0). A queue's
    open batch takes tasks until one does not fit; it runs when full, or batch_timeout_micros after its first task,
    as soon as one of num_batch_threads is free, and until then goes on taking tasks. `run` gets the payloads of a
    batch and returns one result each; its error becomes every task's."""

    def __init__(self, options: BatchingOptions, run: Callable[[list[Any]], list[Any]]) -> None:
        self.options, self.run = options, run
        self._queues: dict[Hashable, _Queue] = {}
        self._threads = asyncio.Semaphore(options.num_batch_threads)
        self._executor = ThreadPoolExecutor(options.num_batch_threads, thread_name_prefix=options.thread_pool_name)
        self._runners: set[asyncio.Task] = set()

    def submit(self, key: Hashable, rows: int, model: str, payload: Any) -> asyncio.Future:
        """Queue a task of `rows` rows; the future answers with its own result, or its batch's error."""
        limit = self.options.max_batch_size
        if rows > limit:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, f"Task size {rows} is larger than maximum input batch size {limit}"
            )
        queue = self._queues.setdefault(key, _Queue())
        batch = queue.open
        if batch is not None and batch.rows + rows > limit:
            if len(queue.waiting) >= self.options.max_enqueued_batches:
                raise ServingError(
                    grpc.StatusCode.UNAVAILABLE,
                    "The batch scheduling queue to which this task was submitted is full; currently "
                    f"{len(queue.waiting)} batches enqueued and max_enqueued_batches is "
                    f"{self.options.max_enqueued_batches}",
                )
            batch.full.set()
            batch = None
        loop = asyncio.get_running_loop()
        if batch is None:
            batch = queue.open = _Batch()
            queue.waiting.append(batch)
            runner = loop.create_task(self._run_when_ready(key, model, queue, batch))
            self._runners.add(runner)
            runner.add_done_callback(self._runners.discard)
        task = _Task(payload, rows, loop.create_future())
        batch.tasks.append(task)
        batch.rows += rows
        if batch.rows == limit:
            batch.full.set()  # it stays the open batch, as in TensorFlow: the next task counts it as enqueued
        return task.future

    async def _run_when_ready(self, key: Hashable, model: str, queue: _Queue, batch: _Batch) -> None:
        try:
            await asyncio.wait_for(batch.full.wait(), self.options.batch_timeout_micros / 1e6)
        except TimeoutError:
            pass
        async with self._threads:
            queue.waiting.remove(batch)
            if queue.open is batch:
                queue.open = None
            if not queue.waiting:
                del self._queues[key]
            started = time.perf_counter()
            for task in batch.tasks:
                BATCH_WAIT.labels(model).observe(started - task.enqueued_at)
            live = [task for task in batch.tasks if not task.future.done()]  # a cancelled request needs no answer
            if not live:
                return
            try:
                results = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self.run, [task.payload for task in live]
                )
            except Exception as exc:
                for task in live:
                    if not task.future.done():
                        task.future.set_exception(exc)
                return
            for task, result in zip(live, results, strict=True):
                if not task.future.done():
                    task.future.set_result(result)


async def _answer(
    method: str, spec: model_pb2.ModelSpec, context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[_R]]
) -> _R:
    """Run one request's work, answer a ServingError with its gRPC status, and time the request by its outcome."""
    started = time.perf_counter()
    code = grpc.StatusCode.UNKNOWN  # what grpc.aio answers for an exception that escapes a method
    try:
        result = await work()
        code = grpc.StatusCode.OK
        return result
    except ServingError as error:
        code = error.code
        await context.abort(error.code, error.message)
        raise  # abort raises; this only tells the type checker
    except asyncio.CancelledError:
        code = grpc.StatusCode.CANCELLED
        raise
    finally:
        REQUEST_SECONDS.labels(spec.name, method, code.name).observe(time.perf_counter() - started)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata; Classify, Regress and MultiInference answer UNIMPLEMENTED (base class).
    With a batch scheduler, Predict requests of a signature with a batch axis are merged; others run alone."""

    def __init__(self, repo: ModelRepository, batching: BatchScheduler | None = None) -> None:
        self.repo, self.batching = repo, batching

    async def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        return await _answer("Predict", request.model_spec, context, lambda: self._predict(request))

    async def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        return await _answer("GetModelMetadata", request.model_spec, context, lambda: self._metadata(request))

    async def _predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        servable = self.repo.find(request.model_spec)
        if self.batching is None:
            return await asyncio.to_thread(_predict, servable, request)
        call = await asyncio.to_thread(_prepare, servable, request)
        if call.batchable:
            return await self.batching.submit(call.batch_key, call.rows, servable.name, call)
        return (await asyncio.to_thread(_run, [call]))[0]

    async def _metadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        servable = self.repo.find(request.model_spec)
        if not request.metadata_field:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, "GetModelMetadataRequest must specify at least one metadata_field"
            )
        for field_name in request.metadata_field:
            if field_name != "signature_def":
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Metadata field {field_name} is not supported")
        packed = any_pb2.Any()
        packed.Pack(get_model_metadata_pb2.SignatureDefMap(signature_def=servable.signature_defs))
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.metadata["signature_def"].CopyFrom(packed)
        return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus; HandleReloadConfigRequest answers UNIMPLEMENTED (base class)."""

    def __init__(self, repo: ModelRepository) -> None:
        self.repo = repo

    async def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.aio.ServicerContext
    ) -> get_model_status_pb2.GetModelStatusResponse:
        return await _answer("GetModelStatus", request.model_spec, context, lambda: self._status(request.model_spec))

    async def _status(self, spec: model_pb2.ModelSpec) -> get_model_status_pb2.GetModelStatusResponse:
        version = _requested_version(spec)
        loaded = self.repo.servables.get(spec.name, {})
        if not loaded:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {spec.name}")
        if version and version not in loaded:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find version {version} of model {spec.name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for v in sorted(loaded, reverse=True):
            if not version or v == version:
                # status is left at its default: error_code OK, no message, as TF Serving reports a loaded version.
                response.model_version_status.add(version=v, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE)
        return response


async def start_server(
    models_dir: Path,
    host: str,
    port: int,
    model_names: list[str] | None = None,
    *,
    model_config: model_server_config_pb2.ModelServerConfig | None = None,
    batching: BatchingOptions | None = None,
    ssl: tfs_config_pb2.SSLConfig | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Load the models (those of model_config when given), then listen; returns the server and its bound port
    (port 0 picks a free one). batching None runs each request alone, as TF Serving without --enable_batching."""
    if model_config is not None:
        servables = await asyncio.to_thread(load_configured_models, model_config, models_dir)
    else:
        servables = await asyncio.to_thread(load_models, models_dir, model_names)
    repo = ModelRepository(servables, None if model_config is not None else Path(models_dir))
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # Without this a second server on a busy port would silently share its traffic instead of failing.
            ("grpc.so_reuseport", 0),
        ]
    )
    scheduler = BatchScheduler(batching, _run) if batching is not None else None
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(repo, scheduler), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(repo), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if ssl is not None:
        credentials = grpc.ssl_server_credentials(
            [(ssl.server_key.encode(), ssl.server_cert.encode())],
            root_certificates=ssl.custom_ca.encode() or None,
            require_client_auth=ssl.client_verify,
        )
        bound = server.add_secure_port(f"{host}:{port}", credentials)
    else:
        bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    for service in HEALTH_SERVICES:
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "model server listening on %s:%d (%s), serving %s, batching %s",
        host,
        bound,
        "TLS" if ssl is not None else "plaintext",
        {name: sorted(loaded) for name, loaded in repo.servables.items()},
        batching or "off",
    )
    return server, bound


async def start_rest(host: str, port: int, metrics: str | None = TFS_METRICS_PATH) -> tuple[web.AppRunner, int]:
    """TF Serving's REST port as far as this server has one: Prometheus metrics at `metrics` (none when None), and
    /healthz and /readyz as every service of the line answers. Started once the models are loaded, as
    tensorflow/serving opens its REST port, so it is ready whenever it answers."""

    async def ready() -> bool:
        return True

    return await start_http(host, port, ready, metrics)


async def serve(
    models_dir: Path,
    host: str,
    port: int,
    *,
    rest_api_port: int = 0,
    metrics: str | None = TFS_METRICS_PATH,
    **loading: Any,
) -> None:
    """Run until cancelled; in-flight requests get a few seconds to finish. rest_api_port 0 opens no REST port,
    as TF Serving's --rest_api_port=0; `loading`: start_server's model_names, model_config and batching."""
    server, _ = await start_server(models_dir, host, port, **loading)
    rest = (await start_rest(host, rest_api_port, metrics))[0] if rest_api_port else None
    try:
        await server.wait_for_termination()
    finally:
        if rest is not None:
            await rest.cleanup()
        await server.stop(grace=5)
