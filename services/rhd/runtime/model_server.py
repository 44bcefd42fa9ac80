"""The embedded stand-in for TensorFlow Serving: its gRPC PredictionService (Predict, GetModelMetadata),
ModelService.GetModelStatus and the gRPC health service over a models/<name>/<version>/ SavedModel tree.

Clients cannot tell it from `tensorflow/serving`; production runs the real one (k8s/, compose/).
"""

import asyncio
import logging
from pathlib import Path
from typing import Any

import grpc
import tensorflow as tf
from google.protobuf import any_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.apis.get_model_metadata_pb2 import SignatureDefMap

from rhd.runtime.modelstore import versions

log = logging.getLogger(__name__)
DEFAULT_SIGNATURE = "serving_default"


class _Servable:
    def __init__(self, name: str, version: int, path: Path) -> None:
        self.name, self.version = name, version
        self.model = tf.saved_model.load(str(path))
        meta = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
        self.signature_defs = meta.meta_graphs[0].signature_def


class ModelRepository:
    def __init__(self, models_dir: Path, names: list[str] | None = None) -> None:
        self.servables: dict[str, dict[int, _Servable]] = {}
        root = Path(models_dir)
        for name in names or sorted(p.name for p in root.iterdir() if p.is_dir()):
            loaded = {v: _Servable(name, v, root / name / str(v)) for v in versions(root, name)
                      if (root / name / str(v) / "saved_model.pb").exists()}
            if loaded:
                self.servables[name] = loaded
                log.info("serving %s versions %s", name, sorted(loaded))

    def find(self, spec: Any, context: grpc.aio.ServicerContext | None = None) -> _Servable:
        models = self.servables.get(spec.name)
        version = spec.version.value if spec.HasField("version") else 0
        if models and version in models:
            return models[version]
        if models and not version:
            return models[max(models)]
        request = f"Specific({spec.name}, {version})" if version else f"Latest({spec.name})"
        raise _Abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request}")


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, repo: ModelRepository) -> None:
        self.repo = repo

    async def Predict(self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext):  # noqa: N802
        try:
            servable = self.repo.find(request.model_spec)
            name = request.model_spec.signature_name or DEFAULT_SIGNATURE
            if name not in servable.model.signatures:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"Serving signature name: \"{name}\" not found")
            signature = servable.model.signatures[name]
            inputs = _inputs(signature, request)
            outputs = await asyncio.to_thread(lambda: signature(**inputs))
        except _Abort as abort:
            await context.abort(abort.code, abort.message)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = name
        for key, tensor in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(tensor.numpy()))
        return response

    async def GetModelMetadata(self, request, context):  # noqa: N802
        try:
            servable = self.repo.find(request.model_spec)
            if list(request.metadata_field) != ["signature_def"]:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "Metadata field signature_def is the one supported")
        except _Abort as abort:
            await context.abort(abort.code, abort.message)
        packed = any_pb2.Any()
        packed.Pack(SignatureDefMap(signature_def=servable.signature_defs))
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.metadata["signature_def"].CopyFrom(packed)
        return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, repo: ModelRepository) -> None:
        self.repo = repo

    async def GetModelStatus(self, request, context):  # noqa: N802
        models = self.repo.servables.get(request.model_spec.name)
        wanted = request.model_spec.version.value if request.model_spec.HasField("version") else 0
        if not models or (wanted and wanted not in models):
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"Could not find any versions of model {request.model_spec.name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for version in sorted(models, reverse=True):
            if wanted and version != wanted:
                continue
            status = response.model_version_status.add(version=version)
            status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        return response


def _inputs(signature: Any, request: predict_pb2.PredictRequest) -> dict[str, tf.Tensor]:
    specs = signature.structured_input_signature[1]
    if set(request.inputs) != set(specs):
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                     f"Expected inputs {sorted(specs)}, got {sorted(request.inputs)}")
    inputs = {}
    for key, spec in specs.items():
        try:
            array = tf.make_ndarray(request.inputs[key])
        except (TypeError, ValueError) as exc:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"input {key}: {exc}") from None
        if tf.as_dtype(array.dtype) != spec.dtype:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                         f"input {key}: expects dtype {spec.dtype.name}, got {tf.as_dtype(array.dtype).name}")
        if not spec.shape.is_compatible_with(array.shape):
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                         f"input {key}: expects shape {spec.shape}, got {list(array.shape)}")
        inputs[key] = tf.constant(array)
    return inputs


async def start_server(models_dir: Path, host: str, port: int,
                       model_names: list[str] | None = None) -> tuple[grpc.aio.Server, int]:
    repo = ModelRepository(models_dir, model_names)
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(repo), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(repo), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    for service in ("", "tensorflow.serving.PredictionService"):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    log.info("model server on %s:%d serving %s", host, bound, sorted(repo.servables))
    return server, bound


async def serve(models_dir: Path, host: str, port: int, model_names: list[str] | None = None) -> None:
    server, _ = await start_server(models_dir, host, port, model_names)
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(grace=2)
