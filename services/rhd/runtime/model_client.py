"""Client of the TensorFlow Serving gRPC API (tensorflow-serving-api stubs over grpc.aio).

Frames from concurrent callers are micro-batched into one Predict request; UNAVAILABLE and deadline
errors are retried with backoff for a bounded time. It talks to `tensorflow/serving` or to the
embedded `rhd model-server` alike.
"""

import asyncio
import logging
import time
from dataclasses import dataclass, field

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from rhd.view.ops import INPUT_NAME

log = logging.getLogger(__name__)
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_NUMPY = {types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64, types_pb2.DT_INT64: np.int64,
          types_pb2.DT_INT32: np.int32, types_pb2.DT_UINT8: np.uint8}
_VALUES = {types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val", types_pb2.DT_INT64: "int64_val",
           types_pb2.DT_INT32: "int_val", types_pb2.DT_UINT8: "int_val"}


class ModelUnavailableError(RuntimeError):
    """The model server did not answer within the retry budget."""


class ModelRequestError(RuntimeError):
    """The model server refused the request (wrong model, version, input)."""


def to_tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    if array.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {array.dtype}")
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in array.shape])
    return tensor_pb2.TensorProto(dtype=types_pb2.DT_UINT8, tensor_shape=shape,
                                  tensor_content=np.ascontiguousarray(array).tobytes())


def from_tensor_proto(tensor: tensor_pb2.TensorProto) -> np.ndarray:
    dtype = _NUMPY.get(tensor.dtype)
    if dtype is None:
        raise ModelRequestError(f"unsupported output dtype {types_pb2.DataType.Name(tensor.dtype)}")
    shape = [d.size for d in tensor.tensor_shape.dim]
    if tensor.tensor_content:
        return np.frombuffer(tensor.tensor_content, dtype).reshape(shape)
    return np.asarray(getattr(tensor, _VALUES[tensor.dtype]), dtype).reshape(shape)


@dataclass
class _Pending:
    frame: np.ndarray
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class ModelClient:
    def __init__(self, target: str, model_name: str, version: int = 0, signature: str = "serving_default",
                 timeout_s: float = 10.0, max_batch: int = 32, max_wait_ms: float = 5.0,
                 retry_for_s: float = 60.0) -> None:
        self.target, self.model_name, self.version, self.signature = target, model_name, version, signature
        self.timeout_s, self.max_batch, self.max_wait_s = timeout_s, max_batch, max_wait_ms / 1000.0
        self.retry_for_s = retry_for_s
        self.channel = grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20),
                                                                  ("grpc.max_send_message_length", 64 << 20)])
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self._queue: list[_Pending] = []
        self._flusher: asyncio.Task | None = None
        self._version_served = 0
        self.batch_sizes: list[int] = []

    def _spec(self, message) -> None:  # noqa: ANN001
        message.model_spec.name = self.model_name
        if self.version:
            message.model_spec.version.value = self.version

    async def predict(self, frame: np.ndarray) -> dict[str, np.ndarray]:
        """One frame's outputs; concurrent calls share one Predict request."""
        pending = _Pending(frame)
        self._queue.append(pending)
        if len(self._queue) >= self.max_batch:
            self._flush_now()
        elif self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_later())
        return await pending.future

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.max_wait_s)
        self._flusher = None
        self._flush_now()

    def _flush_now(self) -> None:
        batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
        if self._flusher is not None and not self._queue:
            self._flusher.cancel()
            self._flusher = None
        if batch:
            asyncio.get_running_loop().create_task(self._run_batch(batch))
        if self._queue and self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_later())

    async def _run_batch(self, batch: list[_Pending]) -> None:
        try:
            outputs = await self.predict_batch(np.stack([p.frame for p in batch]))
        except Exception as exc:  # each caller gets the error of its batch
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        for row, p in enumerate(batch):
            if not p.future.done():
                p.future.set_result({k: v[row] for k, v in outputs.items()})

    async def predict_batch(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        request = predict_pb2.PredictRequest()
        self._spec(request)
        request.model_spec.signature_name = self.signature
        request.inputs[INPUT_NAME].CopyFrom(to_tensor_proto(frames))
        self.batch_sizes.append(len(frames))
        response = await self._call(self.predictions.Predict, request)
        self._version_served = response.model_spec.version.value
        return {k: from_tensor_proto(v) for k, v in response.outputs.items()}

    async def _call(self, method, request):  # noqa: ANN001, ANN202
        give_up = time.monotonic() + self.retry_for_s
        delay = 0.1
        while True:
            try:
                return await method(request, timeout=self.timeout_s)
            except grpc.aio.AioRpcError as err:
                if err.code() not in RETRYABLE:
                    raise ModelRequestError(f"{self.target}: {err.code().name}: {err.details()}") from None
                if time.monotonic() + delay > give_up:
                    raise ModelUnavailableError(
                        f"model server {self.target} unavailable for {self.retry_for_s:.0f} s "
                        f"(last: {err.code().name}: {err.details()})") from None
                log.warning("model server %s: %s, retrying in %.1f s", self.target, err.code().name, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def ready(self) -> bool:
        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request)
        try:
            response = await self.models.GetModelStatus(request, timeout=2.0)
        except grpc.aio.AioRpcError:
            return False
        available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        return any(s.state == available for s in response.model_version_status)

    async def metadata(self) -> int:
        """The version answering requests: the one named, or the latest the server has."""
        if self._version_served:
            return self._version_served
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request)
        response = await self._call(self.predictions.GetModelMetadata, request)
        return response.model_spec.version.value

    async def close(self) -> None:
        await self.channel.close()
