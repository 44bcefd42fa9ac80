"""The embedded stand-in for TensorFlow Serving: its gRPC PredictionService, ModelService.GetModelStatus and
health service over a `<models_dir>/<name>/<version>/` SavedModel tree; production runs `tensorflow/serving`."""

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path

import grpc
import tensorflow as tf
from google.protobuf import any_pb2
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

from rhd.runtime.modelstore import versions

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
HEALTH_SERVICES = ("", "tensorflow.serving.PredictionService")
# gRPC's 4 MiB default is too small for a batch of frames (32 x 240 x 320 x 3 is 7 MiB); TF Serving lifts it too.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024

PREDICT_BATCH = Histogram(
    "rhd_model_server_batch_size", "Rows in each Predict request the embedded model server answers, by model.",
    ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)

# TensorFlow's error codes are gRPC's status codes, number for number.
_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}


class _Abort(Exception):
    """A request the server answers with this gRPC status instead of a response."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class Servable:
    """One loaded model version: the restored SavedModel, and its signature defs as GetModelMetadata reports."""

    def __init__(self, name: str, version: int, path: Path) -> None:
        self.name, self.version = name, version
        self.model = tf.saved_model.load(str(path))
        saved = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
        self.signature_defs = saved.meta_graphs[0].signature_def


def load_models(models_dir: Path, names: list[str] | None = None) -> dict[str, dict[int, Servable]]:
    """Every numeric version folder holding a saved_model.pb, of the named models or of every model found."""
    root = Path(models_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"models directory {root} does not exist; run `make models`")
    servables: dict[str, dict[int, Servable]] = {}
    for name in names or sorted(p.name for p in root.iterdir() if p.is_dir()):
        loadable = [v for v in versions(root, name) if (root / name / str(v) / "saved_model.pb").is_file()]
        if not loadable:
            if names:
                raise FileNotFoundError(f"no SavedModel versions of model {name!r} under {root / name}")
            continue  # other artefacts (scikit-learn models) share the tree
        servables[name] = {v: Servable(name, v, root / name / str(v)) for v in loadable}
        log.info("loaded model %s versions %s", name, loadable)
    if not servables:
        raise FileNotFoundError(f"no SavedModel under {root}/<name>/<version>/; run `make models`")
    return servables


def _requested_version(spec: model_pb2.ModelSpec) -> int:
    """The version asked for; 0 when the latest is."""
    if not spec.name:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    if spec.WhichOneof("version_choice") == "version_label":
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"Unrecognized servable version label: {spec.version_label}")
    return spec.version.value if spec.HasField("version") else 0


class ModelRepository:
    def __init__(self, servables: dict[str, dict[int, Servable]]) -> None:
        self.servables = servables

    def find(self, spec: model_pb2.ModelSpec) -> Servable:
        version = _requested_version(spec)
        loaded = self.servables.get(spec.name, {})
        chosen = version or max(loaded, default=0)
        if chosen not in loaded:
            request = f"Specific({spec.name}, {version})" if version else f"Latest({spec.name})"
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request}")
        return loaded[chosen]


def _dtype_name(enum: int) -> str:
    try:
        return tf.dtypes.as_dtype(enum).name
    except TypeError:
        return f"unknown dtype {enum}"


def _inputs(signature: tf.types.experimental.ConcreteFunction, name: str,
            tensors: Mapping[str, tensor_pb2.TensorProto]) -> dict[str, tf.Tensor]:
    specs = signature.structured_input_signature[1]
    if set(tensors) != set(specs):
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                     f"inputs do not match signature {name}: sent extra {sorted(set(tensors) - set(specs))}, "
                     f"missing but required {sorted(set(specs) - set(tensors))}")
    inputs = {}
    for key, spec in specs.items():
        proto = tensors[key]
        if proto.dtype != spec.dtype.as_datatype_enum:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                         f"input {key}: expects {spec.dtype.name} but {_dtype_name(proto.dtype)} is provided")
        try:
            array = tf.make_ndarray(proto)
        except (TypeError, ValueError) as exc:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"input {key}: malformed tensor: {exc}") from None
        if not spec.shape.is_compatible_with(array.shape):
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                         f"input {key}: expects shape {spec.shape.as_list()}, got {list(array.shape)}")
        inputs[key] = tf.constant(array)
    return inputs


def _predict(servable: Servable, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
    """Decode, run and encode one request; blocking, so it runs in a worker thread."""
    name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    if name not in servable.model.signatures:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f'Serving signature name: "{name}" not found in signature def')
    signature = servable.model.signatures[name]
    inputs = _inputs(signature, name, request.inputs)
    first = next(iter(inputs.values()), None)
    if first is not None and first.shape.rank:
        PREDICT_BATCH.labels(servable.name).observe(first.shape[0])
    try:
        outputs = signature(**inputs)
    except tf.errors.OpError as err:
        raise _Abort(_GRPC_CODES.get(err.error_code, grpc.StatusCode.UNKNOWN), err.message) from None
    wanted = list(request.output_filter) or sorted(outputs)
    for key in wanted:
        if key not in outputs:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                         f"output tensor alias not found in signature: {key}; outputs are {sorted(outputs)}")
    response = predict_pb2.PredictResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    response.model_spec.signature_name = name
    for key in wanted:
        response.outputs[key].CopyFrom(tf.make_tensor_proto(outputs[key].numpy()))
    return response


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata; Classify, Regress and MultiInference answer UNIMPLEMENTED (base class)."""

    def __init__(self, repo: ModelRepository) -> None:
        self.repo = repo

    async def Predict(  # noqa: N802 - the gRPC method name
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        try:
            return await asyncio.to_thread(_predict, self.repo.find(request.model_spec), request)
        except _Abort as abort:
            await context.abort(abort.code, abort.message)

    async def GetModelMetadata(  # noqa: N802
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        try:
            servable = self.repo.find(request.model_spec)
            if not request.metadata_field:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                             "GetModelMetadataRequest must specify at least one metadata_field")
            for field in request.metadata_field:
                if field != "signature_def":
                    raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"Metadata field {field} is not supported")
        except _Abort as abort:
            await context.abort(abort.code, abort.message)
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

    async def GetModelStatus(  # noqa: N802
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.aio.ServicerContext
    ) -> get_model_status_pb2.GetModelStatusResponse:
        spec = request.model_spec
        try:
            version = _requested_version(spec)
            loaded = self.repo.servables.get(spec.name, {})
            if not loaded:
                raise _Abort(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {spec.name}")
            if version and version not in loaded:
                raise _Abort(grpc.StatusCode.NOT_FOUND, f"Could not find version {version} of model {spec.name}")
        except _Abort as abort:
            await context.abort(abort.code, abort.message)
        response = get_model_status_pb2.GetModelStatusResponse()
        for v in sorted(loaded, reverse=True):
            if not version or v == version:
                # status is left at its default: error_code OK, no message, as TF Serving reports a loaded version.
                response.model_version_status.add(version=v, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE)
        return response


async def start_server(models_dir: Path, host: str, port: int,
                       model_names: list[str] | None = None) -> tuple[grpc.aio.Server, int]:
    """Load the models, then listen; returns the server and its bound port (port 0 picks a free one)."""
    repo = ModelRepository(await asyncio.to_thread(load_models, models_dir, model_names))
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        # Without this a second server on a busy port would silently share its traffic instead of failing.
        ("grpc.so_reuseport", 0),
    ])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(repo), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(repo), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    for service in HEALTH_SERVICES:
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    log.info("model server listening on %s:%d, serving %s", host, bound,
             {name: sorted(loaded) for name, loaded in repo.servables.items()})
    return server, bound


async def serve(models_dir: Path, host: str, port: int, model_names: list[str] | None = None) -> None:
    """Run until cancelled; in-flight requests get a few seconds to finish."""
    server, _ = await start_server(models_dir, host, port, model_names)
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(grace=5)

