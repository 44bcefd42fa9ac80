"""The embedded model server answers as TensorFlow Serving does, and the client batches, decodes and retries."""

import asyncio
import contextlib
import json
import os
import sys
import threading
import time
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rhd.cli import main
from rhd.local.broker import free_port
from rhd.local.stack import ServiceProcess
from rhd.model_server.server import (
    BatchingOptions,
    BatchScheduler,
    ServingError,
    metrics_path,
    policy_versions,
    read_batching_parameters,
    read_model_config,
    read_monitoring_config,
    start_rest,
    start_server,
)
from rhd.modelstore import saved_model_sha256
from rhd.runtime.http import TFS_METRICS_PATH
from rhd.runtime.model_client import (
    ModelClient,
    ModelRequestError,
    ModelUnavailableError,
    from_tensor_proto,
    to_tensor_proto,
)
from rhd.runtime.model_client import (
    channel as model_channel,
)
from rhd.watch.figures import parse_samples
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


TFSERVING = Path(__file__).resolve().parents[2] / "compose" / "tfserving"
# Long enough that a batch in these tests runs because it is full, never because its first request waited it out.
LONG_TIMEOUT_MICROS = 10_000_000


def _mean_answer(frames: tf.Tensor) -> dict[str, tf.Tensor]:
    mean = tf.reduce_mean(tf.cast(frames, tf.float32), axis=[1, 2, 3]) / 255.0
    probabilities = tf.stack([mean, 1 - mean, tf.zeros_like(mean), tf.zeros_like(mean)], axis=1)
    return {"probabilities": probabilities, "view_index": tf.argmax(probabilities, axis=1)}


class _Mean(tf.Module):
    """The view model's signature and two more for batching; probability 0 reveals the input: the frame's mean / 255."""

    @tf.function(input_signature=[tf.TensorSpec((None, 240, 320, 3), tf.uint8, name="frames")])
    def serve(self, frames: tf.Tensor) -> dict[str, tf.Tensor]:
        return _mean_answer(frames)

    @tf.function(input_signature=[tf.TensorSpec((None, None, None, 3), tf.uint8, name="frames")])
    def any_size(self, frames: tf.Tensor) -> dict[str, tf.Tensor]:
        """Frames of any size; a saturated pixel fails the whole call, as a model error would."""
        tf.debugging.assert_less(tf.reduce_max(frames), tf.constant(255, tf.uint8), message="saturated frame")
        return _mean_answer(frames)

    @tf.function(input_signature=[tf.TensorSpec((None, 240, 320, 3), tf.uint8, name="frames")])
    def overall(self, frames: tf.Tensor) -> dict[str, tf.Tensor]:
        """One mean over every frame sent: an output without a batch axis, so requests must not be merged."""
        return {"mean": tf.reduce_mean(tf.cast(frames, tf.float32)) / 255.0}


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for version in (1, 2):
        module = _Mean()
        signatures = {"serving_default": module.serve, "any_size": module.any_size, "overall": module.overall}
        folder = root / "view" / str(version)
        tf.saved_model.save(module, str(folder), signatures=signatures)
        (folder / "manifest.json").write_text(json.dumps({"saved_model_sha256": saved_model_sha256(folder)}))
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


def frames(values: list[int], height: int = 240, width: int = 320) -> np.ndarray:
    return np.stack([np.full((height, width, 3), v, np.uint8) for v in values])


def predict_request(
    batch: np.ndarray, name: str = "view", version: int = 0, signature: str = ""
) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version:
        request.model_spec.version.value = version
    request.inputs["frames"].CopyFrom(to_tensor_proto(batch))
    return request


def served_batches() -> tuple[float, float]:
    """Signature calls the server made for model view, and the rows in them."""
    count = REGISTRY.get_sample_value("rhd_model_server_batch_size_count", {"model": "view"}) or 0.0
    total = REGISTRY.get_sample_value("rhd_model_server_batch_size_sum", {"model": "view"}) or 0.0
    return count, total


def queue_waits() -> float:
    return REGISTRY.get_sample_value("rhd_model_server_batch_wait_seconds_count", {"model": "view"}) or 0.0


@contextlib.asynccontextmanager
async def serving(models_dir: Path, **options):
    """A server started with these start_server options, and a channel to it."""
    server, port = await start_server(models_dir, "127.0.0.1", 0, **options)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(0)


def means(response: predict_pb2.PredictResponse) -> list[float]:
    return tf.make_ndarray(response.outputs["probabilities"])[:, 0].tolist()


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
        (
            lambda r: setattr(r.model_spec.version, "value", 7),
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Specific(view, 7)",
        ),
        (
            lambda r: setattr(r.model_spec, "name", "nope"),
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Latest(nope)",
        ),
        (
            lambda r: r.inputs["frames"].CopyFrom(to_tensor_proto(np.zeros((1, 10, 10, 3), np.uint8))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "expects shape [None, 240, 320, 3], got [1, 10, 10, 3]",
        ),
        (
            lambda r: r.inputs["frames"].CopyFrom(to_tensor_proto(np.zeros((1, 240, 320, 3), np.float32))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "expects uint8 but float32 is provided",
        ),
        (
            lambda r: r.inputs["images"].CopyFrom(to_tensor_proto(frames([0]))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "sent extra ['images'], missing but required []",
        ),
        (
            lambda r: setattr(r.model_spec, "signature_name", "classify"),
            grpc.StatusCode.INVALID_ARGUMENT,
            'Serving signature name: "classify" not found',
        ),
        (
            lambda r: r.output_filter.append("logits"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "output tensor alias not found in signature: logits",
        ),
    ],
    ids=[
        "unknown-version",
        "unknown-model",
        "bad-shape",
        "bad-dtype",
        "bad-input-name",
        "bad-signature",
        "bad-output-filter",
    ],
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
        (2, AVAILABLE, 0),
        (1, AVAILABLE, 0),
    ]

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


async def test_batching_merges_concurrent_requests_and_answers_each_its_own_rows(models_dir):
    rows = [1, 3, 2, 2]  # 8 rows, exactly max_batch_size: one batch that runs when full, whatever the arrival order
    values = iter(range(10, 250, 10))
    batches = [[next(values) for _ in range(n)] for n in rows]
    options = BatchingOptions(max_batch_size=8, batch_timeout_micros=LONG_TIMEOUT_MICROS)
    async with serving(models_dir, batching=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        calls_before, rows_before = served_batches()
        waits_before = queue_waits()
        answers = await asyncio.gather(*(stub.Predict(predict_request(frames(batch))) for batch in batches))
        calls, sent = served_batches()
    for batch, answer in zip(batches, answers, strict=True):
        assert means(answer) == pytest.approx([v / 255 for v in batch], abs=1e-6)
        assert tf.make_ndarray(answer.outputs["view_index"]).shape == (len(batch),)
        assert answer.model_spec.version.value == 2
    assert (calls - calls_before, sent - rows_before) == (1, 8)  # one signature call for the four requests
    assert queue_waits() - waits_before == 4


async def test_batching_refuses_a_request_above_max_batch_size_in_tf_servings_words(models_dir):
    async with serving(models_dir, batching=BatchingOptions(max_batch_size=8)) as channel:
        calls_before, _ = served_batches()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(predict_request(frames([0] * 9)))
        assert served_batches()[0] == calls_before
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "Task size 9 is larger than maximum input batch size 8"


async def test_batching_does_not_merge_requests_of_different_frame_shapes(models_dir):
    small, large = frames([40, 80], 120, 160), frames([120, 160])
    async with serving(models_dir, batching=BatchingOptions(max_batch_size=8, batch_timeout_micros=50_000)) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        calls_before, rows_before = served_batches()
        answers = await asyncio.gather(
            *(stub.Predict(predict_request(batch, signature="any_size")) for batch in (small, large))
        )
        calls, sent = served_batches()
    assert [means(a) for a in answers] == [pytest.approx([40 / 255, 80 / 255]), pytest.approx([120 / 255, 160 / 255])]
    assert (calls - calls_before, sent - rows_before) == (2, 4)


async def test_batching_gives_a_merged_calls_error_to_every_request_of_the_batch(models_dir):
    options = BatchingOptions(max_batch_size=8, batch_timeout_micros=LONG_TIMEOUT_MICROS)
    async with serving(models_dir, batching=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        calls_before, _ = served_batches()
        answers = await asyncio.gather(
            stub.Predict(predict_request(frames([10, 20, 255, 30]), signature="any_size")),
            stub.Predict(predict_request(frames([40, 50, 60, 70]), signature="any_size")),
            return_exceptions=True,
        )
        assert served_batches()[0] - calls_before == 1
    for answer in answers:
        assert isinstance(answer, grpc.aio.AioRpcError)
        assert answer.code() == grpc.StatusCode.INVALID_ARGUMENT and "saturated frame" in answer.details()


async def test_batching_runs_alone_a_signature_whose_output_has_no_batch_axis(models_dir):
    options = BatchingOptions(max_batch_size=8, batch_timeout_micros=LONG_TIMEOUT_MICROS)
    async with serving(models_dir, batching=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        calls_before, _ = served_batches()
        answers = await asyncio.gather(
            *(stub.Predict(predict_request(frames(batch), signature="overall")) for batch in ([51], [102, 204]))
        )
        assert served_batches()[0] - calls_before == 2
    assert [float(tf.make_ndarray(a.outputs["mean"])) for a in answers] == pytest.approx([0.2, 0.6])


async def test_a_full_batch_queue_refuses_tasks_unavailable_and_queues_are_per_key():
    started, release = threading.Event(), threading.Event()
    batches_run = []

    def run(payloads: list[str]) -> list[str]:
        batches_run.append(payloads)
        started.set()
        release.wait(60)
        return [f"answer {p}" for p in payloads]

    scheduler = BatchScheduler(BatchingOptions(max_batch_size=2, num_batch_threads=1, max_enqueued_batches=1), run)
    running = scheduler.submit("key", 2, "view", "a")  # full at once: it takes the only batch thread
    assert await asyncio.to_thread(started.wait, 60)
    waiting = [scheduler.submit("key", 1, "view", p) for p in "bc"]  # one open batch: max_enqueued_batches
    with pytest.raises(ServingError) as err:
        scheduler.submit("key", 1, "view", "d")  # would need a second enqueued batch
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert err.value.message == (
        "The batch scheduling queue to which this task was submitted is full; "
        "currently 1 batches enqueued and max_enqueued_batches is 1"
    )
    elsewhere = scheduler.submit("other key", 1, "view", "e")
    release.set()
    assert await asyncio.gather(running, *waiting, elsewhere) == ["answer a", "answer b", "answer c", "answer e"]
    assert sorted(batches_run) == [["a"], ["b", "c"], ["e"]]


def test_batching_parameters_file_reads_tf_servings_text_format(tmp_path):
    path = tmp_path / "batching_parameters.txt"
    path.write_text("# a comment\nmax_batch_size { value: 8 }\nbatch_timeout_micros { value: 50000 }\n")
    assert read_batching_parameters(path) == BatchingOptions(
        max_batch_size=8, batch_timeout_micros=50_000, max_enqueued_batches=10, num_batch_threads=os.cpu_count()
    )
    for text, message in [
        ("allowed_batch_sizes: 8", "allowed_batch_sizes: understood by tensorflow/serving"),
        ("num_batch_threads { value: 0 }", "num_batch_threads must be positive; was 0"),
        ("max_batch_size: 8", "max_batch_size"),  # the fields are wrappers: `{ value: 8 }`
    ]:
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_batching_parameters(path)


def test_the_shipped_tfserving_files_parse_and_serve_view_valve_and_video_at_their_two_newest_versions():
    assert read_batching_parameters(TFSERVING / "batching_parameters.txt") == BatchingOptions(
        max_batch_size=64, batch_timeout_micros=2000, num_batch_threads=4, max_enqueued_batches=100
    )
    config = read_model_config(TFSERVING / "models.config")
    assert [model.name for model in config.model_config_list.config] == ["view", "valve", "video"]
    for model in config.model_config_list.config:
        assert (model.base_path, model.model_platform) == (f"/models/{model.name}", "tensorflow")
        assert model.model_version_policy.WhichOneof("policy_choice") == "latest"
        assert model.model_version_policy.latest.num_versions == 2
        assert policy_versions(model, [1, 2, 3]) == [2, 3]
    assert 'path: "/monitoring/prometheus/metrics"' in (TFSERVING / "monitoring.config").read_text()


def requests_timed(samples: dict, model: str, method: str, code: str) -> float:
    return samples.get(
        ("rhd_model_server_request_seconds_count", (("code", code), ("method", method), ("model", model))), 0.0
    )


def registry_samples() -> dict:
    """This process's metrics as the REST port exposes them."""
    return parse_samples(generate_latest().decode())


@contextlib.asynccontextmanager
async def rest_port(metrics: str | None = TFS_METRICS_PATH):
    runner, port = await start_rest("127.0.0.1", 0, metrics)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", timeout=aiohttp.ClientTimeout(total=5)) as http:
            yield http
    finally:
        await runner.cleanup()


async def test_the_rest_port_serves_prometheus_metrics_with_every_request_timed_by_method_and_status(channel):
    before = registry_samples()
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    await stub.Predict(predict_request(frames([0])))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Predict(predict_request(frames([0]), name="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "view"
    await model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status)
    async with rest_port() as http:
        async with http.get("/monitoring/prometheus/metrics") as response:
            assert response.status == 200 and response.content_type == "text/plain"
            text = await response.text()
        for path, expected in (("/healthz", 200), ("/readyz", 200), ("/metrics", 404)):  # only TF Serving's path
            async with http.get(path) as response:
                assert response.status == expected, path
    families = {family.name for family in text_string_to_metric_families(text)}
    assert {
        "rhd_model_server_request_seconds",
        "rhd_model_server_batch_size",
        "rhd_model_server_batch_wait_seconds",
    } <= families
    after = parse_samples(text)
    for model, method, code in [
        ("view", "Predict", "OK"),
        ("nope", "Predict", "NOT_FOUND"),
        ("view", "GetModelStatus", "OK"),
    ]:
        assert requests_timed(after, model, method, code) - requests_timed(before, model, method, code) == 1, code
    assert requests_timed(after, "view", "Predict", "NOT_FOUND") == requests_timed(
        before, "view", "Predict", "NOT_FOUND"
    )


async def test_a_monitoring_config_that_leaves_prometheus_off_serves_no_metrics():
    async with rest_port(None) as http:
        async with http.get(TFS_METRICS_PATH) as response:
            assert response.status == 404
        async with http.get("/readyz") as response:
            assert response.status == 200


def test_the_monitoring_config_decides_where_the_metrics_answer(tmp_path):
    assert metrics_path(None) == "/monitoring/prometheus/metrics"  # no file: still scrapeable (TF Serving: none)
    assert metrics_path(read_monitoring_config(TFSERVING / "monitoring.config")) == "/monitoring/prometheus/metrics"
    path = tmp_path / "monitoring.config"
    for text, expected in [
        ('prometheus_config { enable: true path: "/custom/metrics" }', "/custom/metrics"),
        ("prometheus_config { enable: true }", "/monitoring/prometheus/metrics"),  # TF Serving's default path
        ('prometheus_config { path: "/custom/metrics" }', None),  # not enabled
        ("", None),
    ]:
        path.write_text(text)
        assert metrics_path(read_monitoring_config(path)) == expected, text
    for text in (
        'prometheus_config { enable: true path: "metrics" }',
        'prometheus_config { path: "/readyz" }',
        "prometheus { enable: true }",
    ):
        path.write_text(text)
        with pytest.raises(ValueError, match=str(path)):
            read_monitoring_config(path)


async def test_rhd_model_server_serves_metrics_on_its_rest_port_at_the_monitoring_configs_path(models_dir, tmp_path):
    config = tmp_path / "monitoring.config"
    config.write_text('prometheus_config { enable: true path: "/custom/metrics" }')
    grpc_port, rest = free_port(), free_port()
    server = ServiceProcess(
        "model-server",
        [
            sys.executable,
            "-m",
            "rhd.cli",
            "model-server",
            "--port",
            str(grpc_port),
            "--rest-api-port",
            str(rest),
            "--models-dir",
            str(models_dir),
            "--monitoring-config-file",
            str(config),
        ],
        dict(os.environ),
        tmp_path / "model-server.log",
    )
    server.start()
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{rest}", timeout=aiohttp.ClientTimeout(total=5)) as http:
            deadline = time.monotonic() + 120
            while True:  # the REST port opens once the models are loaded
                assert server.alive(), server.log_path.read_text()
                assert time.monotonic() < deadline, server.log_path.read_text()
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get("/readyz") as response:
                        if response.status == 200:
                            break
                await asyncio.sleep(0.2)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
                request.model_spec.name = "view"
                await prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request)
            async with http.get("/custom/metrics") as response:
                assert response.status == 200
                samples = parse_samples(await response.text())
            async with http.get(TFS_METRICS_PATH) as response:
                assert response.status == 404
        assert requests_timed(samples, "view", "GetModelMetadata", "OK") == 1
    finally:
        assert server.stop(timeout_s=30) == 0


@pytest.mark.parametrize(
    ("policy", "served"),
    [
        ("", [2]),  # TF Serving's default: latest 1
        ("model_version_policy { latest { num_versions: 1 } }", [2]),
        ("model_version_policy { latest { num_versions: 2 } }", [2, 1]),
        ("model_version_policy { specific { versions: 1 } }", [1]),
        ("model_version_policy { all {} }", [2, 1]),
    ],
    ids=["default", "latest-1", "latest-2", "specific-1", "all"],
)
async def test_the_model_config_version_policy_decides_which_versions_serve(models_dir, tmp_path, policy, served):
    path = tmp_path / "models.config"
    # A relative base_path is read under the models dir.
    path.write_text(
        f'model_config_list {{ config {{ name: "view" base_path: "view" model_platform: "tensorflow" {policy} }} }}'
    )
    async with serving(models_dir, model_config=read_model_config(path)) as channel:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "view"
        status = await model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request)
        assert [s.version for s in status.model_version_status] == served
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        assert (await stub.Predict(predict_request(frames([0])))).model_spec.version.value == max(served)
        for version in (1, 2):
            if version in served:
                assert (
                    await stub.Predict(predict_request(frames([0]), version=version))
                ).model_spec.version.value == version
                continue
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Predict(predict_request(frames([0]), version=version))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert err.value.details() == f"Servable not found for request: Specific(view, {version})"


async def test_an_absolute_base_path_is_used_as_is_under_the_configured_name(models_dir, tmp_path):
    path = tmp_path / "models.config"
    path.write_text(
        f'model_config_list {{ config {{ name: "echo" base_path: "{models_dir / "view"}" '
        'model_platform: "tensorflow" } }'
    )
    async with serving(tmp_path, model_config=read_model_config(path)) as channel:
        answer = await prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            predict_request(frames([51]), name="echo")
        )
    assert (answer.model_spec.name, answer.model_spec.version.value) == ("echo", 2)
    assert means(answer) == pytest.approx([0.2])


@pytest.mark.parametrize(
    ("config", "error", "message"),
    [
        (
            'config { name: "view" base_path: "missing" model_platform: "tensorflow" }',
            FileNotFoundError,
            r"model 'view': no SavedModel version under .*missing for version policy latest 1 \(default\)",
        ),
        (
            'config { name: "study" base_path: "study" model_platform: "tensorflow" }',
            FileNotFoundError,
            "model 'study': no SavedModel version",
        ),
        (
            'config { name: "view" base_path: "view" model_platform: "tensorflow" '
            "model_version_policy { specific { versions: 7 } } }",
            FileNotFoundError,
            r"versions there: \[1, 2\]",
        ),
        ('config { name: "view" base_path: "view" }', ValueError, "model_platform ''"),
        (
            'config { name: "view" base_path: "view" model_platform: "tensorflow" } '
            'config { name: "view" base_path: "view" model_platform: "tensorflow" }',
            ValueError,
            "named twice",
        ),
        ("", ValueError, "names no model"),
    ],
    ids=["missing-folder", "no-savedmodel", "specific-version-absent", "no-platform", "duplicate", "empty"],
)
async def test_a_model_config_with_nothing_to_serve_refuses_to_start(models_dir, tmp_path, config, error, message):
    path = tmp_path / "models.config"
    path.write_text(f"model_config_list {{ {config} }}")
    with pytest.raises(error, match=message):
        await start_server(models_dir, "127.0.0.1", 0, model_config=read_model_config(path))


def test_the_cli_refuses_what_tensorflow_serving_refuses(models_dir, tmp_path):
    parameters = TFSERVING / "batching_parameters.txt"
    with pytest.raises(SystemExit, match="--batching-parameters-file is set without --enable-batching"):
        main(["model-server", "--batching-parameters-file", str(parameters)])
    config = tmp_path / "models.config"
    config.write_text('model_config_list { config { name: "view" base_path: "nowhere" model_platform: "tensorflow" } }')
    with pytest.raises(SystemExit, match="rhd model-server: model 'view': no SavedModel version"):
        main(
            [
                "model-server",
                "--port",
                "0",
                "--models-dir",
                str(models_dir),
                "--model-config-file",
                str(config),
                "--enable-batching",
                "--batching-parameters-file",
                str(parameters),
            ]
        )


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


def test_a_model_whose_files_are_not_those_its_manifest_recorded_is_refused(models_dir, tmp_path):
    """The manifest's saved_model_sha256 is checked when a version loads: changed variables are not served."""
    import shutil

    from rhd.model_server.server import load_models
    from rhd.modelstore import ModelIntegrityError

    copy = tmp_path / "models"
    shutil.copytree(models_dir / "view" / "1", copy / "view" / "1")
    assert set(load_models(copy, ["view"])["view"]) == {1}
    data = next((copy / "view" / "1" / "variables").glob("*.data-*"))
    data.write_bytes(data.read_bytes()[:-1] + bytes([data.read_bytes()[-1] ^ 1]))  # one bit of the parameters
    with pytest.raises(ModelIntegrityError, match="the manifest recorded"):
        load_models(copy, ["view"])
    (copy / "view" / "1" / "manifest.json").unlink()
    with pytest.raises(ModelIntegrityError, match="no readable manifest"):
        load_models(copy, ["view"])


async def test_the_grpc_port_speaks_tls_with_the_ssl_config_file_and_nothing_else(models_dir, tmp_path):
    """TF Serving's --ssl_config_file: the stages' client checks the server's certificate against the CA made at
    set-up (RHD_MODEL_SERVER_CA) and predicts; a plaintext client, or one that trusts another CA, gets nothing."""
    from rhd.cli import main
    from rhd.local.security import Security
    from rhd.model_server.server import read_ssl_config

    security = Security.create(tmp_path / "security", [], servers=("model-server",))
    # As on Kubernetes: the key and the chain apart (a TLS Secret's tls.key, tls.crt), made into the SSLConfig by
    # `rhd model-server-tls` (the model server pod's init container).
    pem = security.server_pem("model-server").read_text()
    key_end = pem.index("-----END PRIVATE KEY-----") + len("-----END PRIVATE KEY-----\n")
    (tmp_path / "tls.key").write_text(pem[:key_end])
    (tmp_path / "tls.crt").write_text(pem[key_end:])
    args = ["--key", str(tmp_path / "tls.key"), "--cert", str(tmp_path / "tls.crt"), "--out", str(tmp_path / "ssl")]
    assert main(["model-server-tls", *args]) == 0
    assert (tmp_path / "ssl").read_text() == security.ssl_config("model-server").read_text()
    (tmp_path / "not.pem").write_text("a certificate, trust me")
    with pytest.raises(SystemExit, match="not PEM"):
        main(
            ["model-server-tls", "--key", str(tmp_path / "tls.key"), "--cert", str(tmp_path / "not.pem"), "--out", "x"]
        )
    ssl = read_ssl_config(tmp_path / "ssl")
    other_ca = Security.create(tmp_path / "other", [], servers=()).ca.read_bytes()
    server, port = await start_server(models_dir, "127.0.0.1", 0, ssl=ssl)
    target = f"127.0.0.1:{port}"
    try:
        client = ModelClient(target, "view", ca=security.ca.read_bytes(), retry_for_s=0)
        try:
            answer = await client.predict(frames([102])[0])
        finally:
            await client.close()
        assert answer["probabilities"][0] == pytest.approx(0.4, abs=1e-6)
        for refused in (grpc.aio.insecure_channel(target), model_channel(target, other_ca)):
            async with refused as channel:
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)
    with pytest.raises(ValueError, match="client_verify needs custom_ca"):
        bad = tmp_path / "bad.txt"
        bad.write_text('server_key: "k"\nserver_cert: "c"\nclient_verify: true\n')
        read_ssl_config(bad)
