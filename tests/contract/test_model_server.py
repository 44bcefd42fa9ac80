"""The embedded model server answers as TensorFlow Serving does, and the client batches, decodes and retries."""

import asyncio

import grpc
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY
from rhd.runtime.model_client import (
    ModelClient,
    ModelRequestError,
    ModelUnavailableError,
    from_tensor_proto,
    to_tensor_proto,
)
from rhd.runtime.model_server import start_server
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE


class _Mean(tf.Module):
    """The view model's signature; its answer reveals its input: probability 0 is the frame's mean pixel / 255."""

    @tf.function(input_signature=[tf.TensorSpec((None, 240, 320, 3), tf.uint8, name="frames")])
    def serve(self, frames: tf.Tensor) -> dict[str, tf.Tensor]:
        mean = tf.reduce_mean(tf.cast(frames, tf.float32), axis=[1, 2, 3]) / 255.0
        probabilities = tf.stack([mean, 1 - mean, tf.zeros_like(mean), tf.zeros_like(mean)], axis=1)
        return {"probabilities": probabilities, "view_index": tf.argmax(probabilities, axis=1)}


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for version in (1, 2):
        module = _Mean()
        tf.saved_model.save(module, str(root / "view" / str(version)), signatures={"serving_default": module.serve})
    # Other artefacts share the tree (the study model is scikit-learn): the server must pass them by.
    (root / "study" / "1").mkdir(parents=True)
    (root / "study" / "1" / "model.skops").write_bytes(b"not a SavedModel")
    return root


@pytest.fixture
async def server(models_dir):
    server, port = await start_server(models_dir, "127.0.0.1", 0)
    yield f"127.0.0.1:{port}"
    await server.stop(0)


@pytest.fixture
async def channel(server):
    async with grpc.aio.insecure_channel(server) as channel:
        yield channel


def frames(values: list[int]) -> np.ndarray:
    return np.stack([np.full((240, 320, 3), v, np.uint8) for v in values])


def predict_request(batch: np.ndarray, name: str = "view", version: int = 0) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if version:
        request.model_spec.version.value = version
    request.inputs["frames"].CopyFrom(to_tensor_proto(batch))
    return request


def served_batches() -> tuple[float, float]:
    """Predict requests the server answered for model view, and the frames in them."""
    count = REGISTRY.get_sample_value("rhd_model_server_batch_size_count", {"model": "view"}) or 0.0
    total = REGISTRY.get_sample_value("rhd_model_server_batch_size_sum", {"model": "view"}) or 0.0
    return count, total


async def test_predict_answers_with_the_latest_version_and_tf_serving_tensors(channel):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    response = await stub.Predict(predict_request(frames([51, 102])))
    assert response.model_spec.name == "view"
    assert response.model_spec.version.value == 2
    assert response.model_spec.signature_name == "serving_default"
    probabilities = tf.make_ndarray(response.outputs["probabilities"])
    assert probabilities.shape == (2, 4) and probabilities.dtype == np.float32
    assert probabilities[:, 0] == pytest.approx([0.2, 0.4])
    view_index = tf.make_ndarray(response.outputs["view_index"])
    assert view_index.dtype == np.int64 and view_index.tolist() == [1, 1]
    # The client's decoder reads what the server encodes.
    assert from_tensor_proto(response.outputs["probabilities"]) == pytest.approx(probabilities)

    pinned = await stub.Predict(predict_request(frames([0]), version=1))
    assert pinned.model_spec.version.value == 1


@pytest.mark.parametrize(
    ("mutate", "code", "message"),
    [
        (lambda r: setattr(r.model_spec.version, "value", 7), grpc.StatusCode.NOT_FOUND,
         "Servable not found for request: Specific(view, 7)"),
        (lambda r: setattr(r.model_spec, "name", "nope"), grpc.StatusCode.NOT_FOUND,
         "Servable not found for request: Latest(nope)"),
        (lambda r: r.inputs["frames"].CopyFrom(to_tensor_proto(np.zeros((1, 10, 10, 3), np.uint8))),
         grpc.StatusCode.INVALID_ARGUMENT, "expects shape [None, 240, 320, 3], got [1, 10, 10, 3]"),
        (lambda r: r.inputs["frames"].CopyFrom(to_tensor_proto(np.zeros((1, 240, 320, 3), np.float32))),
         grpc.StatusCode.INVALID_ARGUMENT, "expects uint8 but float32 is provided"),
        (lambda r: r.inputs["images"].CopyFrom(to_tensor_proto(frames([0]))), grpc.StatusCode.INVALID_ARGUMENT,
         "sent extra ['images'], missing but required []"),
        (lambda r: setattr(r.model_spec, "signature_name", "classify"), grpc.StatusCode.INVALID_ARGUMENT,
         'Serving signature name: "classify" not found'),
        (lambda r: r.output_filter.append("logits"), grpc.StatusCode.INVALID_ARGUMENT,
         "output tensor alias not found in signature: logits"),
    ],
    ids=["unknown-version", "unknown-model", "bad-shape", "bad-dtype", "bad-input-name", "bad-signature",
         "bad-output-filter"],
)
async def test_predict_refuses_bad_requests_with_tf_serving_status_codes(channel, mutate, code, message):
    request = predict_request(frames([0]))
    mutate(request)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request)
    assert err.value.code() == code
    assert message in err.value.details()


async def test_predict_honours_the_output_filter(channel):
    request = predict_request(frames([0]))
    request.output_filter.append("view_index")
    response = await prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request)
    assert list(response.outputs) == ["view_index"]


async def test_metadata_packs_the_saved_models_signature_defs(channel):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "view"
    answer = await prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request)
    assert answer.model_spec.version.value == 2
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert answer.metadata["signature_def"].Unpack(signatures)
    serving = signatures.signature_def["serving_default"]
    assert list(serving.inputs) == ["frames"]
    assert serving.inputs["frames"].dtype == types_pb2.DT_UINT8
    assert [d.size for d in serving.inputs["frames"].tensor_shape.dim] == [-1, 240, 320, 3]
    assert set(serving.outputs) == {"probabilities", "view_index"}
    assert serving.outputs["view_index"].dtype == types_pb2.DT_INT64

    request.metadata_field[:] = ["graph_def"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_model_status_lists_every_loaded_version_available(channel):
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "view"
    status = await stub.GetModelStatus(request)
    assert [(s.version, s.state, s.status.error_code) for s in status.model_version_status] == [
        (2, AVAILABLE, 0), (1, AVAILABLE, 0)]

    request.model_spec.version.value = 1
    assert [s.version for s in (await stub.GetModelStatus(request)).model_version_status] == [1]
    request.model_spec.version.value = 3
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetModelStatus(request)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    request.model_spec.name = "study"  # in the tree, but not a SavedModel
    request.model_spec.ClearField("version")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetModelStatus(request)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_health_says_serving_and_other_methods_are_unimplemented(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "tensorflow.serving.PredictionService"):
        answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "view"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await prediction_service_pb2_grpc.PredictionServiceStub(channel).Classify(request)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_a_server_without_savedmodels_refuses_to_start(tmp_path):
    with pytest.raises(FileNotFoundError, match="no SavedModel"):
        await start_server(tmp_path, "127.0.0.1", 0)
    with pytest.raises(FileNotFoundError, match="model 'view'"):
        await start_server(tmp_path, "127.0.0.1", 0, model_names=["view"])


def test_client_decodes_the_repeated_field_encoding_too():
    # TF Serving answers with float_val / int64_val unless asked otherwise; trailing repeats may be left out.
    probabilities = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[0.5, 0.25, 0.25])
    probabilities.tensor_shape.dim.add(size=1)
    probabilities.tensor_shape.dim.add(size=4)
    assert from_tensor_proto(probabilities).tolist() == [[0.5, 0.25, 0.25, 0.25]]
    index = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT64, int64_val=[3, 1])
    index.tensor_shape.dim.add(size=2)
    decoded = from_tensor_proto(index)
    assert decoded.dtype == np.int64 and decoded.tolist() == [3, 1]
    with pytest.raises(ModelRequestError, match="unsupported output dtype DT_STRING"):
        from_tensor_proto(tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING))


async def test_client_micro_batches_and_answers_each_frame_its_own_row_in_order(server):
    client = ModelClient(server, "view", max_batch=8, max_wait_ms=50)
    assert await client.ready()
    assert await client.metadata() == 2
    values = list(range(0, 250, 10))  # 25 frames: at least 4 requests of at most 8
    requests_before, frames_before = served_batches()
    answers = await asyncio.gather(*(client.predict(frame) for frame in frames(values)))
    requests, sent = served_batches()
    assert [a["probabilities"][0] for a in answers] == pytest.approx([v / 255 for v in values], abs=1e-6)
    assert all(a["probabilities"].shape == (4,) and a["view_index"].shape == () for a in answers)
    assert sent - frames_before == len(values)
    assert 4 <= requests - requests_before <= 6
    await client.close()


async def test_client_pinned_to_a_version_and_refused_requests(server):
    pinned = ModelClient(server, "view", version=1)
    assert await pinned.ready() and await pinned.metadata() == 1
    await pinned.close()
    missing = ModelClient(server, "view", version=9, retry_for_s=5)
    assert not await missing.ready()
    with pytest.raises(ModelRequestError, match="NOT_FOUND: Servable not found for request: Specific"):
        await missing.predict(frames([0])[0])
    await missing.close()
    wrong_input = ModelClient(server, "view", input_name="images")
    with pytest.raises(ModelRequestError, match="no signature 'serving_default' with input 'images'"):
        await wrong_input.metadata()
    await wrong_input.close()


async def test_client_waits_for_a_restarted_server_and_loses_nothing(models_dir):
    server, port = await start_server(models_dir, "127.0.0.1", 0)
    client = ModelClient(f"127.0.0.1:{port}", "view", max_wait_ms=1, retry_for_s=30, timeout_s=2)
    assert (await client.predict(frames([51])[0]))["probabilities"][0] == pytest.approx(0.2)
    await server.stop(0)
    assert not await client.ready()
    pending = asyncio.ensure_future(client.predict(frames([102])[0]))
    await asyncio.sleep(1.0)
    assert not pending.done()
    server, _ = await start_server(models_dir, "127.0.0.1", port)
    answer = await asyncio.wait_for(pending, 20)
    assert answer["probabilities"][0] == pytest.approx(0.4)
    assert await client.ready()
    await client.close()
    await server.stop(0)


async def test_client_gives_up_after_its_retry_budget_with_a_clear_error():
    client = ModelClient("127.0.0.1:1", "view", max_wait_ms=1, retry_for_s=0.5, timeout_s=0.2)
    with pytest.raises(ModelUnavailableError, match=r"model server 127\.0\.0\.1:1 .*0\.5 s; last status UNAVAILABLE"):
        await client.predict(frames([0])[0])
    await client.close()


async def test_closing_the_client_fails_waiting_callers_instead_of_hanging():
    client = ModelClient("127.0.0.1:1", "view", retry_for_s=60, timeout_s=0.2)
    pending = asyncio.ensure_future(client.predict(frames([0])[0]))
    await asyncio.sleep(0.3)
    await client.close()
    with pytest.raises(ModelRequestError, match="closed"):
        await asyncio.wait_for(pending, 5)
    with pytest.raises(ModelRequestError, match="closed"):
        await client.predict(frames([0])[0])
