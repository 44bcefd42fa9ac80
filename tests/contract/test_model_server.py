"""The embedded model server answers as TensorFlow Serving does, and the client batches and retries."""

import asyncio

import grpc
import numpy as np
import pytest
import tensorflow as tf
from rhd.runtime.model_client import ModelClient, ModelUnavailableError, to_tensor_proto
from rhd.runtime.model_server import start_server
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.apis.get_model_metadata_pb2 import SignatureDefMap

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class _Mean(tf.Module):
    """A model whose answer reveals its input: probability 0 is the frame's mean pixel / 255."""

    @tf.function(input_signature=[tf.TensorSpec((None, 240, 320, 3), tf.uint8, name="frames")])
    def serve(self, frames):
        mean = tf.reduce_mean(tf.cast(frames, tf.float32), axis=[1, 2, 3]) / 255.0
        probabilities = tf.stack([mean, 1 - mean, tf.zeros_like(mean), tf.zeros_like(mean)], axis=1)
        return {"probabilities": probabilities, "view_index": tf.argmax(probabilities, axis=1)}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for version in (1, 2):
        module = _Mean()
        tf.saved_model.save(module, str(root / "view" / str(version)), signatures={"serving_default": module.serve})
    return root


def frames(values):
    return np.stack([np.full((240, 320, 3), v, np.uint8) for v in values])


async def test_predict_returns_tf_serving_shapes_and_the_latest_version(models_dir):
    server, port = await start_server(models_dir, "127.0.0.1", 0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "view"
        request.inputs["frames"].CopyFrom(to_tensor_proto(frames([51, 102])))
        response = await stub.Predict(request)
        assert response.model_spec.version.value == 2
        assert response.model_spec.signature_name == "serving_default"
        probabilities = tf.make_ndarray(response.outputs["probabilities"])
        assert probabilities.shape == (2, 4) and probabilities.dtype == np.float32
        assert probabilities[:, 0] == pytest.approx([0.2, 0.4])
        assert tf.make_ndarray(response.outputs["view_index"]).dtype == np.int64

        request.model_spec.version.value = 7
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Predict(request)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "Servable not found for request: Specific(view, 7)" in err.value.details()

        bad = predict_pb2.PredictRequest()
        bad.model_spec.name = "view"
        bad.inputs["frames"].CopyFrom(to_tensor_proto(np.zeros((1, 10, 10, 3), np.uint8)))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Predict(bad)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        bad.model_spec.name = "nope"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Predict(bad)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

        meta = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        meta.model_spec.name = "view"
        answer = await stub.GetModelMetadata(meta)
        signatures = SignatureDefMap()
        answer.metadata["signature_def"].Unpack(signatures)
        serving = signatures.signature_def["serving_default"]
        assert list(serving.inputs) == ["frames"]
        assert set(serving.outputs) == {"probabilities", "view_index"}

        status_request = get_model_status_pb2.GetModelStatusRequest()
        status_request.model_spec.name = "view"
        status = await model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status_request)
        assert [(s.version, s.state) for s in status.model_version_status] == [
            (2, get_model_status_pb2.ModelVersionStatus.AVAILABLE),
            (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE),
        ]
    await server.stop(0)


async def test_client_micro_batches_and_answers_each_frame_in_order(models_dir):
    server, port = await start_server(models_dir, "127.0.0.1", 0)
    client = ModelClient(f"127.0.0.1:{port}", "view", max_batch=8, max_wait_ms=20)
    assert await client.ready()
    values = list(range(0, 250, 10))
    answers = await asyncio.gather(*(client.predict(f) for f in frames(values)))
    assert [a["probabilities"][0] for a in answers] == pytest.approx([v / 255 for v in values], abs=1e-6)
    assert sum(client.batch_sizes) == len(values) and max(client.batch_sizes) == 8
    assert len(client.batch_sizes) < len(values)
    assert await client.metadata() == 2
    await client.close()
    await server.stop(0)


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
    answer = await asyncio.wait_for(pending, 30)
    assert answer["probabilities"][0] == pytest.approx(0.4)
    await client.close()
    await server.stop(0)


async def test_client_gives_up_with_a_clear_error_after_its_retry_budget():
    client = ModelClient("127.0.0.1:1", "view", max_wait_ms=1, retry_for_s=0.5, timeout_s=0.2)
    with pytest.raises(ModelUnavailableError, match="unavailable for 0 s|unavailable for 1 s"):
        await client.predict(frames([0])[0])
    await client.close()
