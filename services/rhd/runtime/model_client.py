"""Client of the TensorFlow Serving gRPC API, for `tensorflow/serving` and the embedded `rhd model-server` alike:
concurrent frames share one Predict request; UNAVAILABLE and deadline errors are retried for a bounded time."""

import asyncio
import logging
import time
from collections import defaultdict

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

from rhd.runtime import metrics
from rhd.runtime.settings import Settings

log = logging.getLogger(__name__)

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
FIRST_BACKOFF_S, MAX_BACKOFF_S = 0.1, 2.0
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    # gRPC's own reconnection backs off up to 2 minutes; a restarted server must be seen within our retries.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]

# dtype -> (numpy type, the repeated field TensorFlow uses when tensor_content is empty)
_DTYPES = {
    types_pb2.DT_FLOAT: (np.float32, "float_val"),
    types_pb2.DT_DOUBLE: (np.float64, "double_val"),
    types_pb2.DT_INT64: (np.int64, "int64_val"),
    types_pb2.DT_INT32: (np.int32, "int_val"),
    types_pb2.DT_UINT8: (np.uint8, "int_val"),
    types_pb2.DT_BOOL: (np.bool_, "bool_val"),
}
_ENUMS = {np.dtype(numpy_type): enum for enum, (numpy_type, _) in _DTYPES.items()}


class ModelError(RuntimeError):
    """The model server gave no usable answer."""


class ModelUnavailableError(ModelError):
    """The model server stayed unreachable (or too slow) for the whole retry budget."""


class ModelRequestError(ModelError):
    """The model server refused the request: unknown model or version, wrong input, closed client."""


def to_tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """A TensorProto with the raw bytes in tensor_content, as TensorFlow Serving accepts it."""
    enum = _ENUMS.get(array.dtype)
    if enum is None:
        raise ValueError(f"unsupported dtype {array.dtype}")
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in array.shape])
    return tensor_pb2.TensorProto(dtype=enum, tensor_shape=shape, tensor_content=np.ascontiguousarray(array).tobytes())


def from_tensor_proto(tensor: tensor_pb2.TensorProto) -> np.ndarray:
    """Either encoding TensorFlow Serving may answer with: raw tensor_content, or the typed repeated field."""
    if tensor.dtype not in _DTYPES:
        raise ModelRequestError(f"unsupported output dtype {types_pb2.DataType.Name(tensor.dtype)}")
    numpy_type, field = _DTYPES[tensor.dtype]
    shape = [d.size for d in tensor.tensor_shape.dim]
    size = int(np.prod(shape))
    values: np.ndarray
    if tensor.tensor_content:
        values = np.frombuffer(tensor.tensor_content, numpy_type)
    else:
        values = np.asarray(getattr(tensor, field), numpy_type)
        # TensorFlow may drop trailing repeats of the last value: they are implied, as tf.make_ndarray reads them.
        if 0 < values.size < size:
            values = np.concatenate([values, np.repeat(values[-1:], size - values.size)])
    if values.size != size:
        raise ModelRequestError(f"output holds {values.size} values for shape {shape}")
    return values.reshape(shape)


def channel(target: str, ca: bytes | None = None) -> grpc.aio.Channel:
    """A channel to the model server: TLS, the server's certificate checked against `ca`, when one is given."""
    if ca is None:
        return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
    return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=ca), options=CHANNEL_OPTIONS)


class ModelClient:
    """One model of one server. `predict` queues a frame; a batcher sends up to max_batch queued frames at once,
    waiting at most max_wait_ms for company, so concurrent callers share requests."""

    @classmethod
    def from_settings(cls, settings: Settings, model_name: str, version: int = 0) -> "ModelClient":
        """A client of RHD_MODEL_SERVER with the RHD_MODEL_* deadline, micro-batching and retry settings."""
        return cls(
            settings.model_server,
            model_name,
            version=version,
            timeout_s=settings.model_timeout_s,
            max_batch=settings.model_max_batch,
            max_wait_ms=settings.model_max_wait_ms,
            retry_for_s=settings.model_retry_for_s,
            ca=settings.model_server_ca.read_bytes() if settings.model_server_ca else None,
        )

    def __init__(
        self,
        target: str,
        model_name: str,
        version: int = 0,
        signature: str = "serving_default",
        timeout_s: float = 10.0,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        retry_for_s: float = 240.0,
        input_name: str = "frames",
        ca: bytes | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.target, self.model_name, self.version, self.signature = target, model_name, version, signature
        self.timeout_s, self.max_batch, self.max_wait_s = timeout_s, max_batch, max_wait_ms / 1000.0
        self.retry_for_s, self.input_name = retry_for_s, input_name
        self.retrying = 0  # calls waiting (in backoff) for the model server
        self._channel = channel(target, ca)
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future]] = asyncio.Queue()
        self._waiting: set[asyncio.Future] = set()
        self._batcher: asyncio.Task | None = None
        self._in_flight: set[asyncio.Task] = set()
        self._closed = False

    async def predict(self, frame: np.ndarray) -> dict[str, np.ndarray]:
        """One uint8 example, an H x W x 3 frame (or a T x H x W x 3 clip for the video model) -> its row of every
        output of the signature."""
        if frame.dtype != np.uint8 or frame.ndim < 3 or frame.shape[-1] != 3:
            raise ValueError(
                f"expected a uint8 H x W x 3 frame (or T x H x W x 3 clip), got {frame.dtype} {frame.shape}"
            )
        if self._closed:
            raise ModelRequestError(f"model client for {self.target} is closed")
        future = asyncio.get_running_loop().create_future()
        self._waiting.add(future)
        self._queue.put_nowait((frame, future))
        if self._batcher is None:
            self._batcher = asyncio.create_task(self._batch_forever())
        try:
            return await future
        finally:
            self._waiting.discard(future)

    async def _batch_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                try:
                    async with asyncio.timeout_at(deadline):
                        batch.append(await self._queue.get())
                except TimeoutError:
                    break
            # Batches are sent concurrently: one waiting on a slow or absent server does not hold up the next.
            task = asyncio.create_task(self._send(batch))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _send(self, batch: list[tuple[np.ndarray, asyncio.Future]]) -> None:
        # Callers that gave up are not sent; frames of another size cannot share a tensor.
        by_shape: dict[tuple[int, ...], list[tuple[np.ndarray, asyncio.Future]]] = defaultdict(list)
        for frame, future in batch:
            if not future.done():
                by_shape[frame.shape].append((frame, future))
        await asyncio.gather(*(self._send_stacked(items) for items in by_shape.values()))

    async def _send_stacked(self, items: list[tuple[np.ndarray, asyncio.Future]]) -> None:
        try:
            outputs = await self.predict_batch(np.stack([frame for frame, _ in items]))
        except Exception as exc:  # every caller of the batch gets the error; the batcher goes on
            for _, future in items:
                if not future.done():
                    future.set_exception(exc)
            return
        for row, (_, future) in enumerate(items):
            if not future.done():
                future.set_result({key: values[row] for key, values in outputs.items()})

    async def predict_batch(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """One Predict request for a stack of frames (N x H x W x 3 uint8); every output has N rows."""
        request = predict_pb2.PredictRequest()
        self._set_spec(request.model_spec)
        request.model_spec.signature_name = self.signature
        request.inputs[self.input_name].CopyFrom(to_tensor_proto(frames))
        metrics.MODEL_BATCH_SIZE.labels(self.model_name).observe(len(frames))
        response = await self._call(self._predictions.Predict, request, timed=True)
        outputs = {key: from_tensor_proto(tensor) for key, tensor in response.outputs.items()}
        for key, values in outputs.items():
            if values.ndim == 0 or len(values) != len(frames):
                raise ModelRequestError(
                    f"output {key!r} has shape {list(values.shape)}, not one row per frame ({len(frames)})"
                )
        return outputs

    async def ready(self) -> bool:
        """The version asked for is AVAILABLE; with version 0, any is (TF Serving answers with the latest one)."""
        request = get_model_status_pb2.GetModelStatusRequest()
        self._set_spec(request.model_spec)
        try:
            response = await self._models.GetModelStatus(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError:
            return False
        available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        return any(
            s.state == available and (not self.version or s.version == self.version)
            for s in response.model_version_status
        )

    async def metadata(self) -> int:
        """The version the server answers with, after checking it has our signature and input."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._set_spec(request.model_spec)
        response = await self._call(self._predictions.GetModelMetadata, request)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        signature = signatures.signature_def.get(self.signature)
        if signature is None or self.input_name not in signature.inputs:
            raise ModelRequestError(
                f"model {self.model_name} version {response.model_spec.version.value} on {self.target} has no "
                f"signature {self.signature!r} with input {self.input_name!r} "
                f"(signatures: {sorted(signatures.signature_def)})"
            )
        return response.model_spec.version.value

    async def close(self) -> None:
        """Stop batching; callers still waiting get ModelRequestError."""
        self._closed = True
        tasks = [task for task in (self._batcher, *self._in_flight) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for future in self._waiting:
            if not future.done():
                future.set_exception(ModelRequestError(f"model client for {self.target} closed"))
        await self._channel.close()

    def _set_spec(self, spec) -> None:
        spec.name = self.model_name
        if self.version:
            spec.version.value = self.version

    async def _call(self, method, request, timed: bool = False):
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.retry_for_s
        delay, waiting = FIRST_BACKOFF_S, False
        try:
            while True:
                started = time.perf_counter()
                try:
                    response = await method(request, timeout=self.timeout_s)
                    if timed:
                        metrics.MODEL_REQUEST_SECONDS.labels(self.model_name, "OK").observe(
                            time.perf_counter() - started
                        )
                    return response
                except grpc.aio.AioRpcError as err:
                    if timed:
                        metrics.MODEL_REQUEST_SECONDS.labels(self.model_name, err.code().name).observe(
                            time.perf_counter() - started
                        )
                    status = f"{err.code().name}: {err.details()}"
                    if err.code() not in RETRYABLE:
                        raise ModelRequestError(
                            f"model server {self.target}, model {self.model_name}: {status}"
                        ) from None
                    if loop.time() >= give_up:
                        raise ModelUnavailableError(
                            f"model server {self.target} (model {self.model_name}) gave no answer for "
                            f"{self.retry_for_s:g} s; last status {status}"
                        ) from None
                    if not waiting:  # one warning per call: not one per backoff of every batch
                        waiting = True
                        self.retrying += 1
                        log.warning(
                            "model server %s: %s; retrying for up to %.0f s", self.target, status, give_up - loop.time()
                        )
                    await asyncio.sleep(min(delay, max(0.0, give_up - loop.time())))
                    delay = min(2 * delay, MAX_BACKOFF_S)
        finally:
            if waiting:
                self.retrying -= 1

    @property
    def waiting(self) -> bool:
        """Whether a call is waiting for the model server to come back (the stage is blocked, not stuck)."""
        return self.retrying > 0
