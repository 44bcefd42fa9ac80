"""Input drift per hospital and device: what a hospital's recent studies look like beside everyone else's.

For each (hospital, device) the last WINDOW diagnosed studies are kept as small summaries: the view mix the view model
read, the kind of frames (colour Doppler, B-mode, spectral, skipped), the suggestion (label or referred) and
completeness. Each mix is compared with the same mix over every other hospital and device (the pooled reference)
by total variation distance (half the L1 distance of the two shares: 0 the same, 1 nothing in common). A new device
whose view mix or frame kinds differ from the rest, or a hospital whose referral rate climbs, shows here before it
shows in the confirmed reads. Exposed as metrics (labels: hospital id and device model, never a patient's datum),
alerted on by compose/prometheus (RhdInputDrift) and drawn on the operators' drift page.
"""

from collections import Counter, deque
from dataclasses import dataclass, field

from prometheus_client import Gauge

WINDOW = 50  # studies per hospital and device
MIN_STUDIES = 10  # below this a share is too noisy to call drift
DRIFT_ALERT = 0.3  # the page marks (and the alert rule fires at) a distance above this
MAX_DEVICES = 32  # distinct device names per hospital kept as metric labels; more go under "other"
ASPECTS = ("views", "frames", "labels")

SHARE = Gauge(
    "rhd_input_share", "Share of a hospital's and device's recent studies", ["hospital", "device", "aspect", "value"]
)
DRIFT = Gauge(
    "rhd_input_drift",
    "Total variation distance of a hospital's and device's recent mix from every other's (0 same, 1 disjoint)",
    ["hospital", "device", "aspect"],
)
STUDIES = Gauge("rhd_input_studies", "Studies in the drift window of a hospital and device", ["hospital", "device"])


@dataclass(frozen=True)
class StudySummary:
    views: Counter  # view label -> frames the view model read as it
    frames: Counter  # frame kind (terminal stage) -> frames
    label: str  # normal / borderline / definite / referred / - (failed)


@dataclass
class Source:
    studies: deque = field(default_factory=lambda: deque(maxlen=WINDOW))

    def mix(self, aspect: str) -> Counter:
        total: Counter = Counter()
        for s in self.studies:
            total.update({s.label: 1} if aspect == "labels" else getattr(s, aspect))
        return total


def shares(counts: Counter) -> dict[str, float]:
    n = sum(counts.values())
    return {k: v / n for k, v in sorted(counts.items())} if n else {}


def distance(a: Counter, b: Counter) -> float:
    """Total variation distance between two mixes (nan when either is empty)."""
    p, q = shares(a), shares(b)
    if not p or not q:
        return float("nan")
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def device_name(device: str) -> str:
    """A device model as a metric label: printable, short."""
    cleaned = "".join(ch if ch.isalnum() or ch in " ._-" else "_" for ch in device.strip())[:40]
    return cleaned or "unknown"


class DriftMonitor:
    def __init__(self) -> None:
        self.sources: dict[tuple[str, str], Source] = {}
        self._shares_set: set[tuple[str, str, str, str]] = set()

    def add(self, hospital: str, device: str, summary: StudySummary) -> None:
        device = device_name(device)
        known = {d for h, d in self.sources if h == hospital}
        if device not in known and len(known) >= MAX_DEVICES:
            device = "other"
        self.sources.setdefault((hospital, device), Source()).studies.append(summary)
        self.publish()

    def report(self) -> list[dict]:
        """Per hospital and device: studies in the window, each aspect's shares and its distance from the rest."""
        mixes = {key: {aspect: source.mix(aspect) for aspect in ASPECTS} for key, source in self.sources.items()}
        totals = {aspect: sum((mix[aspect] for mix in mixes.values()), Counter()) for aspect in ASPECTS}
        rows = []
        for (hospital, device), source in sorted(self.sources.items()):
            row: dict = {"hospital": hospital, "device": device, "studies": len(source.studies), "aspects": {}}
            for aspect in ASPECTS:
                mine = mixes[(hospital, device)][aspect]
                d = distance(mine, totals[aspect] - mine)  # every other hospital's and device's
                row["aspects"][aspect] = {
                    "shares": shares(mine),
                    "distance": d,
                    "alert": len(source.studies) >= MIN_STUDIES and d > DRIFT_ALERT,  # nan (no others) never is
                }
            row["referred"] = row["aspects"]["labels"]["shares"].get("referred", 0.0)
            rows.append(row)
        return rows

    def publish(self) -> None:
        now_set = set()
        for row in self.report():
            hospital, device = row["hospital"], row["device"]
            STUDIES.labels(hospital, device).set(row["studies"])
            for aspect, figures in row["aspects"].items():
                DRIFT.labels(hospital, device, aspect).set(figures["distance"])
                for value, share in figures["shares"].items():
                    SHARE.labels(hospital, device, aspect, value).set(share)
                    now_set.add((hospital, device, aspect, value))
        for gone in self._shares_set - now_set:  # a value no longer in the window: its series goes
            SHARE.remove(*gone)
        self._shares_set = now_set
