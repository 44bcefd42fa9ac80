"""Every stage and topic of the data path, in one place: names, message types, and their creation at start."""

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka.admin import NewTopic
from google.protobuf.message import Message

from rhd.runtime import kafka
from rhd.runtime.settings import Settings
from rhd.v1 import rhd_pb2 as pb

log = logging.getLogger(__name__)

STUDIES_UPLOADED = "studies.uploaded.v1"
STUDIES_DEIDENTIFIED = "studies.deidentified.v1"
STUDIES_LINKS = "studies.links.v1"
FRAMES_DECODED = "frames.decoded.v1"
FRAMES_DOPPLER = "frames.doppler.v1"
FRAMES_SEGMENTED = "frames.segmented.v1"
FRAMES_VIEWED = "frames.viewed.v1"
FRAMES_SPECTRAL = "frames.spectral.v1"
FRAMES_BMODE = "frames.bmode.v1"
FRAMES_DONE = "frames.done.v1"
STUDIES_FEATURES = "studies.features.v1"
STUDIES_DIAGNOSED = "studies.diagnosed.v1"
ACCESS_TRAIL = "access.trail.v1"

TOPIC_ALREADY_EXISTS = 36
# A broker that refuses a topic's configs gets the topic without them (logged): Kafka names these refusals so.
CONFIG_REFUSED = {40, 44}  # INVALID_CONFIG, POLICY_VIOLATION

# The stages in data-path order: the one name of each (folder, `rhd serve` argument, consumer group, metric label).
STAGES: tuple[str, ...] = (
    "deid",
    "split",
    "inspect",
    "segment",
    "view",
    "features",
    "spectral",
    "valve",
    "assemble",
    "diagnose",
)


# The re-link map keeps each study's latest record: its link, or the tombstone that erased it (LGPD). Segments roll
# daily so an erased link is compacted away within about a day, not at the default week.
COMPACTED = (("cleanup.policy", "compact"), ("segment.ms", str(24 * 3600 * 1000)))
# The access trail is evidence: the broker's time retention (compose: 48 h) does not apply to it.
KEPT = (("cleanup.policy", "delete"), ("retention.ms", "-1"))


@dataclass(frozen=True)
class Topic:
    name: str
    message: type[Message]
    key: str  # what the record key is; it decides what stays in order on one partition
    configs: tuple[tuple[str, str], ...] = ()  # set when the topic is created (the .dlq gets none)


TOPICS: tuple[Topic, ...] = (
    Topic(STUDIES_UPLOADED, pb.SealedRecord, "upload_id"),  # a StudyUpload sealed whole (rhd.runtime.secrets)
    Topic(STUDIES_DEIDENTIFIED, pb.StudyUpload, "study pseudonym"),
    Topic(STUDIES_LINKS, pb.SealedRecord, "study pseudonym", configs=COMPACTED),
    Topic(FRAMES_DECODED, pb.Frame, "video_id"),
    Topic(FRAMES_DOPPLER, pb.DopplerFrame, "video_id"),
    Topic(FRAMES_SEGMENTED, pb.SegmentedFrame, "video_id"),
    Topic(FRAMES_VIEWED, pb.ViewedFrame, "video_id"),
    Topic(FRAMES_SPECTRAL, pb.Frame, "video_id"),
    Topic(FRAMES_BMODE, pb.Frame, "video_id"),
    Topic(FRAMES_DONE, pb.FrameDone, "study_id"),
    Topic(STUDIES_FEATURES, pb.StudyFeatures, "study_id"),
    Topic(STUDIES_DIAGNOSED, pb.Diagnosis, "study_id"),
    # Home region, like the links: who read re-linked results or erased a patient, when and why. Sealed (link
    # keyring), append-only, kept.
    Topic(ACCESS_TRAIL, pb.SealedRecord, "hospital_id", configs=KEPT),
)


DLQ_SUFFIX = ".dlq"

# A hospital with a principal of its own on the broker (RHD_HOSPITALS) uploads to a topic of its own, which only it
# may write (rhd.local.security): the topic says who sent a record, as the broker authenticated them.
_HOSPITAL_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_UPLOAD_PREFIX, _UPLOAD_SUFFIX = "studies.uploaded.", ".v1"
_RESULTS_PREFIX = "studies.results."
RESULTS_GROUP = "results"  # `rhd results --serve`: its consumer group (and, on a secured broker, its principal)


def transactional_prefix(stage: str) -> str:
    """Every transactional id a stage's producers take starts so (its ACL is granted on the prefix)."""
    return f"rhd-{stage}-"


def upload_topic(hospital: str) -> str:
    """The hospital's own upload topic, `studies.uploaded.<hospital>.v1`."""
    if not _HOSPITAL_ID.fullmatch(hospital):
        raise ValueError(f"hospital id {hospital!r}: 1-64 letters, digits, _ or - (it names a topic and a principal)")
    return f"{_UPLOAD_PREFIX}{hospital}{_UPLOAD_SUFFIX}"


def results_topic(hospital: str) -> str:
    """The hospital's own results topic, `studies.results.<hospital>.v1` (home region): its diagnoses under its own
    ids, which only it may read (`rhd results --serve` writes them)."""
    upload_topic(hospital)  # a valid hospital id
    return f"{_RESULTS_PREFIX}{hospital}{_UPLOAD_SUFFIX}"


def results_topics(hospitals: Iterable[str]) -> list[str]:
    return [results_topic(h) for h in hospitals]


def hospital_of_upload_topic(topic: str) -> str | None:
    """The hospital whose own upload topic this is; None for the shared raw topic (or any other)."""
    if topic == STUDIES_UPLOADED or not (topic.startswith(_UPLOAD_PREFIX) and topic.endswith(_UPLOAD_SUFFIX)):
        return None
    hospital = topic[len(_UPLOAD_PREFIX) : -len(_UPLOAD_SUFFIX)]
    return hospital if _HOSPITAL_ID.fullmatch(hospital) else None


def upload_topic_for(hospitals: Iterable[str], hospital: str) -> str:
    """Where a hospital's publisher writes: its own upload topic where the deployment names it (RHD_HOSPITALS),
    else the shared raw topic."""
    return upload_topic(hospital) if hospital in hospitals else STUDIES_UPLOADED


def upload_topics(hospitals: Iterable[str]) -> list[str]:
    """Every topic deid reads: the shared raw topic and each hospital's own."""
    return [STUDIES_UPLOADED, *(upload_topic(h) for h in hospitals)]


def dlq(topic: str) -> str:
    """A topic's dead-letter topic. Every upload topic's letters go to the raw topic's, sealed as it is."""
    if hospital_of_upload_topic(topic) is not None:
        topic = STUDIES_UPLOADED
    return f"{topic}{DLQ_SUFFIX}"


@dataclass(frozen=True)
class Flow:
    """What one stage reads and writes: the one list the runner holds each stage to and the broker's ACLs are
    generated from (rhd.local.security). Its input's dead-letter topic is written too."""

    input: str
    outputs: tuple[str, ...]
    reads_back: str = ""  # its own output, read back on every assignment (a stage that writes each key once)
    state: tuple[str, ...] = ()  # read from the start, without a group, when it starts
    # Where the broker has transactions (RHD_TRANSACTIONS): a batch's outputs and its offsets committed as one.
    transactional: bool = False

    def reads(self) -> tuple[str, ...]:
        return (self.input, *((self.reads_back,) if self.reads_back else ()), *self.state)

    def writes(self) -> tuple[str, ...]:
        return (*self.outputs, dlq(self.input))


FLOWS: dict[str, Flow] = {
    "deid": Flow(STUDIES_UPLOADED, (STUDIES_DEIDENTIFIED, STUDIES_LINKS), state=(STUDIES_LINKS,)),
    "split": Flow(STUDIES_DEIDENTIFIED, (FRAMES_DECODED, FRAMES_DONE)),
    # Frame stages write FRAMES_DONE too: a frame that fails there is accounted FAILED.
    "inspect": Flow(FRAMES_DECODED, (FRAMES_DOPPLER, FRAMES_SPECTRAL, FRAMES_BMODE, FRAMES_DONE)),
    # segment sends the frames the view model does not read (views.view_sampled) straight on to features.
    "segment": Flow(FRAMES_DOPPLER, (FRAMES_SEGMENTED, FRAMES_VIEWED, FRAMES_DONE)),
    "view": Flow(FRAMES_SEGMENTED, (FRAMES_VIEWED, FRAMES_DONE)),
    "features": Flow(FRAMES_VIEWED, (FRAMES_DONE,)),
    "spectral": Flow(FRAMES_SPECTRAL, (FRAMES_DONE,)),
    "valve": Flow(FRAMES_BMODE, (FRAMES_DONE,)),
    "assemble": Flow(FRAMES_DONE, (STUDIES_FEATURES,), reads_back=STUDIES_FEATURES, transactional=True),
    "diagnose": Flow(STUDIES_FEATURES, (STUDIES_DIAGNOSED,), reads_back=STUDIES_DIAGNOSED, transactional=True),
}


MESSAGE_OF: dict[str, type[Message]] = {t.name: t.message for t in TOPICS}  # topic -> the message it carries


def all_topic_names(hospitals: Iterable[str] = ()) -> list[str]:
    """Every topic and its dead-letter topic, and the named hospitals' own upload and results topics."""
    hospitals = list(hospitals)
    own = [upload_topic(h) for h in hospitals] + results_topics(hospitals)
    return [name for t in TOPICS for name in (t.name, dlq(t.name))] + own


def topic_configs() -> dict[str, dict[str, str]]:
    """The configs each topic is created with (its .dlq has none)."""
    return {t.name: dict(t.configs) for t in TOPICS if t.configs}


# Two regions (the seed's: identifiable data in Brazil, accelerators elsewhere), each with a cluster of its own.
# Only the home region's cluster holds the topics that carry identifiable or re-linkable data; MirrorMaker 2
# (rhd.local.mirror) copies the de-identified studies out to the GPU region and the diagnoses back, nothing else.
HOME, GPU = "home", "gpu"
HOME_ONLY = (STUDIES_UPLOADED, STUDIES_LINKS, ACCESS_TRAIL)
CROSSING = {(HOME, GPU): (STUDIES_DEIDENTIFIED,), (GPU, HOME): (STUDIES_DIAGNOSED,)}


def stage_region(stage: str) -> str:
    """Where a stage runs: home when it reads or writes a topic that holds identifiable data (deid), else gpu."""
    flow = FLOWS[stage]
    return HOME if {*flow.reads(), *flow.writes()} & set(HOME_ONLY) else GPU


def region_topics(region: str, hospitals: Iterable[str] = ()) -> list[str]:
    """The topics a region's cluster holds: home, what carries identifiable data (the raw uploads, each hospital's,
    their dead letters, the links, the access trail), deid's output and the diagnoses that come back; gpu,
    everything else (with the de-identified studies that come in)."""
    home = [*HOME_ONLY, dlq(STUDIES_UPLOADED), dlq(STUDIES_LINKS), dlq(ACCESS_TRAIL)]
    home += [upload_topic(h) for h in hospitals] + results_topics(hospitals)
    if region == HOME:
        return [*home, STUDIES_DEIDENTIFIED, STUDIES_DIAGNOSED]
    if region == GPU:
        return [name for name in all_topic_names() if name not in home]
    raise ValueError(f"region {region!r}: {HOME} or {GPU}")


async def ensure_topics(
    settings: Settings,
    partitions: int | None = None,
    replication_factor: int | None = None,
    names: Iterable[str] | None = None,
) -> list[str]:
    """Create every topic and its dead-letter topic explicitly (or the `names` given: a region's); return the
    ones that were created.

    Brokers that auto-create topics pick their own partition count, so nothing is left to that.
    """
    partitions = partitions or settings.partitions
    replication_factor = replication_factor or settings.replication_factor
    admin = kafka.admin(settings)
    await admin.start()
    configs = topic_configs()
    try:
        response = await admin.create_topics(
            [
                NewTopic(name, partitions, replication_factor, topic_configs=configs.get(name))
                for name in (list(names) if names is not None else all_topic_names(settings.hospitals))
            ]
        )
        errors = list(response.topic_errors)
        refused = [name for name, code, _ in errors if code in CONFIG_REFUSED and name in configs]
        if refused:
            # Tansu takes the configs and ignores them (docs/privacy.md); a broker that refuses them gets plain
            # topics rather than none, and says so.
            log.warning("the broker refused the configs of %s: created without them", ", ".join(refused))
            retry = await admin.create_topics([NewTopic(name, partitions, replication_factor) for name in refused])
            errors = [e for e in errors if e[0] not in refused] + list(retry.topic_errors)
        created = []
        for name, code, message in errors:
            if code == 0:
                created.append(name)
            elif code != TOPIC_ALREADY_EXISTS:
                raise RuntimeError(f"cannot create topic {name}: error {code} {message}")
        log.info(
            "topics ready (%d created, %d partitions and %d replicas each)",
            len(created),
            partitions,
            replication_factor,
        )
        return created
    finally:
        await admin.close()
