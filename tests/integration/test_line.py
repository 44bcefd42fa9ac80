"""The whole line on the real embedded broker, every stage a separate process: studies in, one
diagnosis per study out, every frame accounted for, bad input dead-lettered while the line goes on."""

import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from conftest import missing_tool
from rhd.deid.ops import record_key_pseudonym
from rhd.deid.policy import load_policy
from rhd.diagnose.ops import CRITERION_MEASUREMENTS
from rhd.labels import CRITERIA
from rhd.local.audit import audit, scrape_pages, tesseract_available
from rhd.local.broker import free_port
from rhd.local.demo import corrupt_one_video
from rhd.local.privacy_report import levels
from rhd.local.publish import publish_uploads, raw_keyring, upload_from_dir
from rhd.local.stack import EmbeddedStack
from rhd.runtime.blobs import BlobStore
from rhd.runtime.kafka import connection
from rhd.runtime.records import schema_headers
from rhd.runtime.secrets import RAW_KEYRING, is_sealed, load_keyring, load_pseudonym_key
from rhd.runtime.settings import Settings
from rhd.runtime.topics import FRAMES_DECODED, FRAMES_VIEWED, STAGES, STUDIES_UPLOADED
from rhd.synth.generator import SynthConfig, load_truth, synth_studies
from rhd.v1 import rhd_pb2 as pb
from rhd.watch.figures import Progress, follow, read_targets, scrape_all, total

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _expected_done(progress: Progress, studies: list[str]) -> bool:
    return (
        all(s in progress.diagnoses for s in studies)
        and all(s in progress.expected_frames for s in studies)
        and all(len(progress.frame_records.get(s, ())) == progress.expected_frames[s] for s in studies)
    )


class Prometheus:
    """A real Prometheus (Debian's binary, taken into the venv by `make promtool`) scraping the embedded stack through
    its file_sd list every 2 s, with compose/prometheus's recording and alert rules."""

    def __init__(self, workdir: Path, targets: Path) -> None:
        self.binary = shutil.which("prometheus", path=str(Path(sys.executable).parent)) or shutil.which("prometheus")
        self.workdir, self.targets, self.port = workdir, targets, free_port()
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        if not self.binary:
            return
        rules = sorted(str(path) for path in (ROOT / "compose" / "prometheus" / "rules").glob("*.yml"))
        config = {
            "global": {"scrape_interval": "2s", "scrape_timeout": "2s", "evaluation_interval": "2s"},
            "rule_files": rules,
            "scrape_configs": [{"job_name": "rhd", "file_sd_configs": [{"files": [str(self.targets)]}]}],
        }
        (self.workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        with open(self.workdir / "prometheus.log", "wb") as log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def scraping(self, jobs: int, timeout_s: float = 60.0) -> None:
        """Wait until every job has been scraped once, so the counters are seen before the studies move them."""
        if self.process is None:
            return
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while time.monotonic() < deadline:
                try:
                    if len(await self.query(http, "up == 1")) >= jobs:
                        return
                except (aiohttp.ClientError, TimeoutError):
                    pass  # still starting
                await asyncio.sleep(0.5)
        raise TimeoutError(f"prometheus did not scrape {jobs} targets in {timeout_s:.0f} s; see {self.workdir}")

    async def query(self, http: aiohttp.ClientSession, promql: str) -> list[dict]:
        async with http.get(f"http://127.0.0.1:{self.port}/api/v1/query", params={"query": promql}) as response:
            body = await response.json()
        assert body["status"] == "success", body
        return body["data"]["result"]

    async def answers(self, queries: dict[str, str]) -> dict[str, list[dict]] | None:
        if self.process is None:
            return None
        await asyncio.sleep(5)  # two scrapes and rule evaluations after the last diagnosis
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            return {name: await self.query(http, promql) for name, promql in queries.items()}

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(15)


PROMQL = {
    "up": "up",
    # Figures the dashboard shows, from the recording rules, at their highest during the run.
    "inspect_rate": 'max_over_time(stage:rhd_messages:rate1m{stage="inspect"}[5m])',
    "deid_dead_letters": 'max_over_time(stage_topic:rhd_dead_letters:rate1m{stage="deid"}[5m])',
    "latency_p95": "max_over_time(stage_quantile:rhd_study_latency_seconds:histogram_quantile5m"
    '{stage="diagnose", quantile="0.95"}[5m])',
    "model_batch": "max_over_time(model:rhd_model_batch_size:mean1m[5m])",
    # Alerts that must not fire on a healthy line: every stage has its consumer, the model server is up.
    "firing": 'ALERTS{alertname=~"RhdStageNoConsumers|RhdModelServerDown|RhdTargetDown"}',
}


@pytest.fixture(scope="module")
def line(tmp_path_factory, broker_kind):
    workdir = tmp_path_factory.mktemp("line")
    # On Apache Kafka the line runs secured: SASL_SSL, each stage its own principal with only its ACLs (a stage that
    # needed a topic it was not granted would stall or die here), and each generated hospital with an upload topic
    # of its own (what deid reads); the test's own clients are the administrator.
    settings = Settings(
        broker=broker_kind,
        broker_secure=broker_kind == "kafka",
        hospitals=[f"H{i:03d}" for i in range(1, 6)] if broker_kind == "kafka" else [],
        blob_dir=workdir / "blobs",
        models_dir=ROOT / "models",
        study_deadline_s=90.0,
        model_retry_for_s=20.0,
    )
    studies = synth_studies(
        5, 4, workdir / "studies", SynthConfig(videos_per_study=8, duration_s=(1.0, 1.0)), balanced=True
    )
    # A study whose last video is truncated, and one whose only video is not a video at all.
    corrupt_one_video(studies[2])
    not_video = workdir / "studies" / "S9999-0000"
    shutil.copytree(studies[0], not_video)
    meta = json.loads((not_video / "study.json").read_text())
    meta["study_id"], meta["videos"] = "S9999-0000", meta["videos"][:1]
    (not_video / "study.json").write_text(json.dumps(meta))
    (not_video / meta["videos"][0]["filename"]).write_bytes(b"this is a PDF report, not a video")
    studies.append(not_video)

    stack = EmbeddedStack(workdir, settings)
    prometheus = Prometheus(workdir, stack.targets_path)

    async def run() -> tuple[Progress, dict]:
        live = await stack.start()
        prometheus.start()
        await prometheus.scraping(len(STAGES) + 1)
        blobs = BlobStore(live.blob_dir)
        seal = raw_keyring(live).seal
        uploads = [upload_from_dir(d, blobs, live.max_message_bytes, seal=seal) for d in studies]
        uploads.append(upload_from_dir(studies[0], blobs, live.max_message_bytes, seal=seal))  # published twice
        await publish_uploads(live, uploads)
        rogue = AIOKafkaProducer(**connection(live), max_request_size=4_000_000)
        await rogue.start()
        await rogue.send_and_wait(STUDIES_UPLOADED, b"\xff\xfe garbage", key=b"garbage")
        await rogue.send_and_wait(STUDIES_UPLOADED, b"\x0a" + b"\x01" * 10, key=b"short")
        await rogue.send_and_wait(STUDIES_UPLOADED, b"\x00" * 1_500_000, key=b"oversized")
        await rogue.send_and_wait(STUDIES_UPLOADED, uploads[0].SerializeToString(), key=b"plain")
        frame_header = schema_headers(pb.Frame())  # written as a Frame, so its content is what is refused
        await rogue.send_and_wait(FRAMES_DECODED, b"\x12\x03abc", key=b"frame-without-key", headers=frame_header)
        await rogue.stop()
        ids = [d.name for d in studies]
        progress = await follow(live, lambda p: _expected_done(p, ids), timeout_s=300, settle_s=8.0)
        alive = {s.name: s.alive() for s in stack.services}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            # What Prometheus would scrape from every service, found the way it would: the stack's file_sd list.
            # The study published twice may be answered (deduplicated) before deid has counted the copy: wait for
            # deid to have handled all six uploads, up to 30 s.
            for _ in range(30):
                scraped = await scrape_all(http, read_targets(stack.targets_path))
                deid = [samples for t, samples in scraped.samples.items() if t.job == "deid"]
                if deid and deid[0] and total(deid[0], "rhd_messages_total", stage="deid", outcome="ok") >= 6:
                    break
                await asyncio.sleep(1)
        # Nothing identifying outside the raw topic: every other topic (dead letters and the sealed links too), the
        # blob store, the logs, the metric labels, and decoded frames read by OCR.
        identifiers = [load_truth(d)["identifiers"] for d in studies if d.name != "S9999-0000"]
        pages = await scrape_pages(read_targets(stack.targets_path))
        ocr = 6 if tesseract_available() else 0
        privacy = await audit(live, identifiers, live.blob_dir, workdir / "logs", pages, frames_to_ocr=ocr)
        return progress, alive, scraped, await prometheus.answers(PROMQL), privacy

    try:
        progress, alive, scraped, prometheus_answers, privacy = asyncio.run(run())
    finally:
        prometheus.stop()
        codes = stack.stop()
    yield {
        "progress": progress,
        "alive": alive,
        "studies": [d.name for d in studies],
        "codes": codes,
        "stack": stack,
        "dirs": studies,
        "metrics": scraped,
        "prometheus": prometheus_answers,
        "privacy": privacy,
    }


def test_every_study_gets_exactly_one_diagnosis(line):
    progress = line["progress"]
    assert sorted(progress.diagnoses) == sorted(line["studies"])
    assert {s: len(d) for s, d in progress.diagnoses.items()} == {s: 1 for s in line["studies"]}


def test_every_frame_is_accounted_for(line):
    progress = line["progress"]
    for study in line["studies"]:
        diagnosis = progress.diagnoses[study][0]
        counts = diagnosis.frames
        assert counts.expected == progress.expected_frames[study]
        assert counts.analysed + counts.skipped + counts.failed == counts.expected
        assert counts.missing == 0


def test_no_identifier_leaves_the_raw_topic(line):
    """rhd audit over the whole line: no identifier the generator wrote (names, IDs, dates, the hospital's study ids,
    UIDs) in any topic but the raw one, in the blob store, the logs or the metric labels, nor readable by OCR in the
    decoded frames."""
    report = line["privacy"]
    assert report.hits == []
    assert report.records > 1000 and report.blobs > 0
    assert report.log_files == len(STAGES) + 2  # every stage, the model server, the broker
    assert report.metric_pages == len(STAGES) + 1
    if report.frames_ocred == 0:
        missing_tool("no tesseract: `make tools` installs Debian's tesseract-ocr")
    assert report.frames_ocred == 6


def test_every_decoded_videos_cardiac_phase_is_known_per_frame_within_two_percent_of_the_cycle(line):
    progress, checked = line["progress"], 0
    for study_dir in line["dirs"][:4]:
        (study,) = progress.studies[study_dir.name]
        truth = {v["video_id"]: v for v in load_truth(study_dir)["videos"]}
        decoded = [v.video_id for v in study.cycles]
        assert len(decoded) == study.videos_expected - study.videos_failed
        for cycle in study.cycles:
            assert cycle.known, cycle.reason
            # Downstream of deid a video is known by its pseudonymous id; the home region's link names it.
            true_phase = np.array([f["phase"] for f in truth[progress.video_names[cycle.video_id]]["frames"]])
            error = np.abs((np.array(cycle.phases) - true_phase + 0.5) % 1.0 - 0.5)
            assert np.median(error) <= 0.02 and error.max() <= 0.05, (cycle.video_id, error.round(3).tolist())
            checked += len(error)
    assert checked > 300


def test_the_spectral_traces_are_read_in_the_line_as_the_valves_truth_has_them(line):
    """Each good study's two continuous-wave traces reach assemble through inspect and the spectral stage: the
    mitral one gives MR's peak velocity and the inflow's mean gradient, the aortic one AR's, within 0.3 m/s and
    0.5 mmHg of the generator's truth."""
    progress = line["progress"]
    for study_dir in (line["dirs"][0], line["dirs"][1], line["dirs"][3]):
        (study,) = progress.studies[study_dir.name]
        f = dict(zip(study.features.names, study.features.values, strict=True))
        assert (f["mitral_trace_read"], f["aortic_trace_read"]) == (1.0, 1.0), study_dir.name
        truth = {v["spectral"]["valve"]: v["spectral"] for v in load_truth(study_dir)["videos"] if v["spectral"]}
        assert abs(f["mr_peak_velocity_m_s"] - truth["mitral"]["mr_peak_m_s"]) <= 0.3
        assert abs(f["ms_mean_gradient_mmhg"] - truth["mitral"]["mean_gradient_mmhg"]) <= 0.5
        assert abs(f["ar_peak_velocity_m_s"] - truth["aortic"]["ar_peak_m_s"]) <= 0.3
        # Each measurement names the frame it was read on: a frame of the study, the traces' of their valve's video.
        videos = {v["video_id"]: v for v in load_truth(study_dir)["videos"]}
        named = progress.video_names
        for e in study.evidence:
            assert 0 <= e.frame_index < videos[named[e.video_id]]["frame_count"], e
        read_on = {e.feature: videos[named[e.video_id]] for e in study.evidence}
        assert read_on["ms_mean_gradient_mmhg"]["spectral"]["valve"] == "mitral"


def test_the_b_mode_videos_are_read_by_the_valve_stage_as_the_valves_truth_has_them(line):
    """Each good study's B-mode PLAX video reaches assemble through inspect and the valve stage (view and valve
    models on the model server): the anterior leaflet's thickness within 1 mm of the truth, read on a frame of that
    video, which the frame's record shows was the valve stage's."""
    progress = line["progress"]
    for study_dir in (line["dirs"][0], line["dirs"][1], line["dirs"][3]):
        (study,) = progress.studies[study_dir.name]
        f = dict(zip(study.features.names, study.features.values, strict=True))
        truth = load_truth(study_dir)
        bmode = {v["video_id"]: v for v in truth["videos"] if v["mode"] == "bmode" and v["view_class"] != "other"}
        assert f["mitral_valve_read"] == len(bmode) >= 1, study_dir.name
        assert abs(f["amvl_thickness_mm"] - truth["valves"]["mitral"]["amvl_thickness_mm"]) <= 1.0, study_dir.name
        read_on = {e.feature: e for e in study.evidence}
        assert progress.video_names[read_on["amvl_thickness_mm"].video_id] in bmode


def test_good_studies_are_complete_with_probabilities(line):
    progress = line["progress"]
    for study in (line["studies"][0], line["studies"][1], line["studies"][3]):
        d = progress.diagnoses[study][0]
        assert d.completeness == pb.COMPLETENESS_COMPLETE, d.reason
        assert d.label != pb.LABEL_UNSPECIFIED
        assert sum(d.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert d.model_version == "study/1"
        # Every WHF criterion's estimate, with the measurements it rests on; the evidence names those of the likely.
        assert [c.criterion for c in d.criteria] == list(CRITERIA)
        assert set(d.criteria[0].measurements) == set(CRITERION_MEASUREMENTS["pathological_mr"])
        assert {"systolic_jet_length_mm_max", "mr_peak_velocity_m_s"} <= set(d.criteria[0].measurements)
        likely = {c.criterion for c in d.criteria if c.met}
        assert all(e.contribution >= 0.5 for e in d.evidence) and bool(d.evidence) == bool(likely)


def test_truncated_video_is_dead_lettered_sealed_and_its_study_incomplete(line):
    """deid cannot read the truncated video: it dead-letters it on the raw topic's .dlq, sealed (the original video,
    or its blob reference, opens only with the raw keyring), names it by its pseudonym, and the study goes on."""
    progress = line["progress"]
    study = line["studies"][2]
    d = progress.diagnoses[study][0]
    assert d.completeness == pb.COMPLETENESS_INCOMPLETE
    pseudonym = next(p for p, name in progress.names.items() if name == study)
    letters = [x for x in progress.dead_letters if x.study_id == pseudonym]
    assert len(letters) == 1 and letters[0].video_id.startswith(pseudonym)
    assert letters[0].stage == "deid" and letters[0].source_topic == STUDIES_UPLOADED
    assert letters[0].reason and letters[0].reason in d.reason and study not in letters[0].reason
    assert letters[0].WhichOneof("original") == "original_bytes" and is_sealed(letters[0].original_bytes)
    raw = load_keyring(line["stack"].settings.secrets_dir / RAW_KEYRING)
    original = raw.open(letters[0].original_bytes)
    video = line["dirs"][2] / f"{progress.video_names[letters[0].video_id]}.mp4"
    assert original == video.read_bytes() or original.startswith(b"blob:sha256:")


def test_non_video_upload_fails_its_study_with_the_reason(line):
    d = line["progress"].diagnoses["S9999-0000"][0]
    assert d.completeness == pb.COMPLETENESS_FAILED
    assert "not a decodable video" in d.reason


def test_bad_messages_are_dead_lettered_with_reasons(line):
    """Raw records that do not parse are dead-lettered by deid, sealed, known by their key's pseudonym."""
    key = load_pseudonym_key(line["stack"].settings.secrets_dir)
    named = {record_key_pseudonym(key, k).encode(): k for k in (b"garbage", b"short", b"oversized", b"plain")}
    letters = {named.get(x.key, x.key): x for x in line["progress"].dead_letters}
    assert "undecodable rhd.v1.SealedRecord" in letters[b"garbage"].reason
    # A hospital that publishes its upload unsealed is told so; what it sent is kept sealed.
    plain = letters[b"plain"]
    kept = plain.original_bytes or BlobStore(line["stack"].settings.blob_dir).get(plain.original_blob_uri)
    assert "not a sealed upload" in plain.reason and is_sealed(kept)
    assert letters[b"short"].reason  # decodes or not, it is not a usable upload
    oversized = letters[b"oversized"]
    assert "over the 1000000-byte message limit" in oversized.reason and oversized.stage == "deid"
    assert oversized.original_blob_uri and not oversized.original_bytes
    sealed = BlobStore(line["stack"].settings.blob_dir).get(oversized.original_blob_uri)
    assert is_sealed(sealed) and b"\x00" * 1000 not in sealed
    assert "frame without study_id/video_id" in letters[b"frame-without-key"].reason
    assert letters[b"frame-without-key"].source_topic == FRAMES_DECODED


def test_services_survive_bad_input_and_stop_cleanly(line):
    assert all(line["alive"].values()), line["alive"]
    assert sum(1 for name in line["alive"] if name in STAGES) == len(STAGES)
    assert line["stack"].all_stopped()
    assert all(code == 0 for code in line["codes"].values()), line["codes"]


def test_the_streaming_line_and_the_in_process_path_give_the_same_diagnosis(line):
    """Parity: each study with a diagnosis (the truncated video's INCOMPLETE one too) gets the same label and
    probabilities from the services as from the stage functions called in-process (training's path)."""
    from rhd.diagnose.ops import diagnose, load_study_model
    from rhd.inprocess import analyse_study
    from rhd.valve.local import LocalValveModel
    from rhd.view.local import LocalViewModel

    model, views = load_study_model(ROOT / "models"), LocalViewModel(ROOT / "models")
    valves = LocalValveModel(ROOT / "models")
    compared = 0
    for study_dir in line["dirs"]:
        [streamed] = line["progress"].diagnoses[study_dir.name]
        if streamed.completeness == pb.COMPLETENESS_FAILED:
            continue
        analysis = analyse_study(study_dir, views, valves)
        local = diagnose(model, analysis.names, analysis.values)
        assert pb.Label.Name(streamed.label) == f"LABEL_{local.label.upper()}", study_dir.name
        assert dict(streamed.probabilities) == pytest.approx(local.probabilities, abs=1e-4), study_dir.name
        assert streamed.frames.analysed == analysis.analysed
        compared += 1
    assert compared == 4


def test_every_service_exposes_what_happened_on_its_metrics_endpoint(line):
    scraped = line["metrics"].samples
    assert {t.job for t in scraped} == set(STAGES) | {"model-server"}
    assert all(samples is not None for samples in scraped.values()), "a target did not answer"
    by_job = {t.job: samples for t, samples in scraped.items()}
    progress = line["progress"]
    # deid: 6 uploads handled (one published twice), 4 rogue records dead-lettered whole (one an unsealed upload);
    # 6 dead letters in all with the truncated video and the non-video. split gets only what deid let through.
    assert total(by_job["deid"], "rhd_messages_total", stage="deid", outcome="ok") == 6
    assert total(by_job["deid"], "rhd_messages_total", stage="deid", outcome="dead_letter") == 4
    assert total(by_job["deid"], "rhd_dead_letters_total", stage="deid", topic=STUDIES_UPLOADED) == 6
    # The anonymity gauge is the k of what the link map says was released (the study published twice counts once):
    # the age as the WHF cut and the sender, nothing finer. Five studies on a day are too few for the minimum k of 5
    # with hospitals told apart: the first four went out with the hospital withheld.
    links = list(progress.link_map.values())
    assert len(links) == 5 and all(set(link["released"]) == {"age_band", "hospital_id"} for link in links)
    assert {link["released"]["age_band"] for link in links} == {"0-20"}
    withheld = sum(link["released"]["hospital_id"] == "*" for link in links)
    assert withheld == 4 and total(by_job["deid"], "rhd_anonymity_withheld_total") == withheld
    k = levels(load_policy(), links, {}).released.k
    assert total(by_job["deid"], "rhd_anonymity_k", window="all") == k == 5
    assert total(by_job["split"], "rhd_messages_total", stage="split", outcome="ok") == 6
    assert total(by_job["split"], "rhd_dead_letters_total", stage="split") == 0
    assert total(by_job["inspect"], "rhd_dead_letters_total", stage="inspect", topic=FRAMES_DECODED) == 1
    # Every terminal record reached assemble; the redelivered study's records were dropped as duplicates.
    assert total(by_job["assemble"], "rhd_messages_total", stage="assemble", outcome="ok") >= progress.terminal_records
    assert total(by_job["assemble"], "rhd_duplicates_total", stage="assemble") > 0
    diagnosed = len(progress.diagnoses)
    assert total(by_job["diagnose"], "rhd_study_latency_seconds_count", stage="diagnose") == diagnosed
    assert total(by_job["diagnose"], "rhd_outputs_total", stage="diagnose", topic="studies.diagnosed.v1") == diagnosed
    # The view stage's Predict calls (the colour frames the view model reads, 8 of a video's: view_sampled; segment
    # sends it no other) and the valve stage's (B-mode frames: the valve model on each, the view model on the frames it
    # reads), and the model server's own count of them, on its TF Serving path.
    frames = total(by_job["view"], "rhd_model_batch_size_sum", model="view")
    assert frames == total(by_job["view"], "rhd_messages_total", stage="view", outcome="ok") > 0
    assert total(by_job["segment"], "rhd_outputs_total", stage="segment", topic=FRAMES_VIEWED) > frames
    bmode = total(by_job["valve"], "rhd_messages_total", stage="valve", outcome="ok")
    assert total(by_job["valve"], "rhd_model_batch_size_sum", model="valve") == bmode > 0
    assert 0 < total(by_job["valve"], "rhd_model_batch_size_sum", model="view") < bmode
    for model, stages in (("view", ("view", "valve")), ("valve", ("valve",))):
        calls = sum(total(by_job[s], "rhd_model_request_seconds_count", model=model, code="OK") for s in stages)
        served = total(
            by_job["model-server"], "rhd_model_server_request_seconds_count", model=model, method="Predict", code="OK"
        )
        assert served == calls > 0, model
    assert total(by_job["view"], "rhd_build_info", stage="view", view_model="view/1") == 1
    assert total(by_job["valve"], "rhd_build_info", stage="valve", view_model="view/1", valve_model="valve/1") == 1
    for stage in STAGES:
        assert total(by_job[stage], "rhd_build_info", stage=stage) == 1


def test_a_real_prometheus_scrapes_every_service_and_records_the_dashboard_figures(line):
    answers = line["prometheus"]
    if answers is None:
        missing_tool("no prometheus binary: `make promtool` takes it from Debian's prometheus package")
    up = {(r["metric"]["job"], r["metric"]["instance"]): float(r["value"][1]) for r in answers["up"]}
    assert {job for job, _ in up} == set(STAGES) | {"model-server"}
    assert all(value == 1 for value in up.values()), up
    assert float(answers["inspect_rate"][0]["value"][1]) > 0, answers
    assert float(answers["deid_dead_letters"][0]["value"][1]) > 0
    assert 0 < float(answers["latency_p95"][0]["value"][1]) <= 300
    assert float(answers["model_batch"][0]["value"][1]) >= 1
    assert answers["firing"] == []
