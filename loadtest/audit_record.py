"""The privacy audit of record: N generated studies (default 200: MP4 and DICOM, broken uploads among them) through
the whole streaming line on the embedded stack (in batches, a fresh stack each), then `rhd audit` over every topic
but the raw one (dead letters and the sealed link map included), the blob store, the services' logs, their metric
pages, and decoded frames by OCR; and the anonymisation level (k, l) of what the line released. Prints figures and
writes JSON; exits 1 when an identifier is found or a study got no answer.

    .venv/bin/python loadtest/audit_record.py [--studies 200] [--ocr 60] [--out DIR]

Broken uploads, each a dead letter with its reason while its study still gets an answer: every 20th study has a
truncated video, every 20th (offset 10) a DICOM file cut short, every 25th a file named .dcm that is not DICOM.
"""

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from rhd.deid.policy import load_policy
from rhd.local.audit import Report, audit, scrape_pages, tesseract_available
from rhd.local.demo import corrupt_one_video
from rhd.local.privacy_report import label_name, levels
from rhd.local.publish import dicom_upload, publish_uploads, raw_keyring, upload_from_dir
from rhd.local.signals import stop_on_sigterm
from rhd.local.stack import EmbeddedStack
from rhd.runtime.blobs import BlobStore
from rhd.runtime.settings import Settings
from rhd.synth.generator import SynthConfig, load_truth, synth_studies
from rhd.watch.figures import Progress, follow, read_targets

ROOT = Path(__file__).resolve().parents[1]


def break_uploads(studies: list[Path]) -> dict[str, str]:
    """Damage some studies as hospitals' uploads get damaged; returns study -> what was done."""
    broken: dict[str, str] = {}
    for i, study in enumerate(studies):
        dicom = sorted((study / "dicom").glob("*.dcm"))
        if i % 20 == 0:
            corrupt_one_video(study)
            broken[study.name] = "truncated MP4 video"
        elif i % 20 == 10 and dicom:
            dicom[-1].write_bytes(dicom[-1].read_bytes()[:4000])
            broken[study.name] = "truncated DICOM file"
        elif i % 25 == 5 and dicom:
            dicom[-1].write_bytes(b"%PDF-1.4 a report, not an image")
            broken[study.name] = "a .dcm file that is not DICOM"
    return broken


async def run_batch(
    workdir: Path, batch: list[Path], studies: list[Path], ocr: int, args: argparse.Namespace
) -> tuple[Progress, Report, float]:
    """One batch through a fresh embedded stack, then the audit of everything it left."""
    settings = Settings(blob_dir=workdir / "blobs", models_dir=ROOT / "models", study_deadline_s=600.0)
    stack = EmbeddedStack(workdir, settings)
    try:
        live = await stack.start()
        blobs, seal = BlobStore(live.blob_dir), raw_keyring(live).seal
        # Every other study as the scanner's DICOM files, the rest as MP4 with a JSON sidecar.
        uploads = []
        for d in batch:
            hospital = json.loads((d / "study.json").read_text())["hospital_id"]  # the sender, as its client knows
            if studies.index(d) % 2:
                # As a PACS's own client would send them, broken files and all (rhd publish would refuse them).
                instances = [(p.name, p.read_bytes()) for p in sorted((d / "dicom").glob("*.dcm"))]
                uid = load_truth(d)["identifiers"]["study_uid"]
                uploads.append(dicom_upload(uid, hospital, instances, blobs, live.max_message_bytes, seal))
            else:
                uploads.append(upload_from_dir(d, blobs, live.max_message_bytes, hospital, seal))
        started = time.monotonic()
        await publish_uploads(live, uploads)
        progress = await follow(live, lambda p: len(p.diagnoses) >= len(batch), args.timeout, settle_s=10.0)
        took = time.monotonic() - started
        pages = await scrape_pages(read_targets(stack.targets_path))
        identifiers = [load_truth(d)["identifiers"] for d in batch]
        report = await audit(live, identifiers, live.blob_dir, workdir / "logs", pages, frames_to_ocr=ocr)
        return progress, report, took
    finally:
        stack.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--seed", type=int, default=8080)
    parser.add_argument("--ocr", type=int, default=60, help="decoded frames to OCR")
    parser.add_argument("--batch", type=int, default=40, help="studies per embedded stack")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--out", default="loadtest/results")
    args = parser.parse_args()
    stop_on_sigterm()  # a SIGTERM stops the services this started, as Ctrl-C does
    if args.ocr and not tesseract_available():
        raise SystemExit("--ocr needs tesseract (make tools)")
    workdir = Path(tempfile.mkdtemp(prefix="rhd-audit-"))
    config = SynthConfig(videos_per_study=4, duration_s=(1.0, 1.0))
    studies = synth_studies(args.seed, args.studies, workdir / "studies", config, dicom=True)
    broken = break_uploads(studies)
    # In batches, each on a fresh embedded stack: the embedded broker keeps every record in memory (about 0.1 GB a
    # study of these), so 200 studies at once would not fit in this machine's memory.
    batches = [studies[i : i + args.batch] for i in range(0, len(studies), args.batch)]
    ocr_each = -(-args.ocr // len(batches))
    totals = Report()
    links: list[dict] = []
    labels: dict[str, str] = {}
    diagnosed: set[str] = set()
    dead_letters, took = 0, 0.0
    for b, batch in enumerate(batches):
        progress, report, seconds = asyncio.run(run_batch(workdir / f"batch{b}", batch, studies, ocr_each, args))
        print(
            f"batch {b + 1}/{len(batches)}: {len(batch)} studies in {seconds:.0f} s, {len(report.hits)} hits",
            flush=True,
        )
        totals.hits += report.hits
        for name in ("records", "blobs", "log_files", "metric_pages", "frames_ocred"):
            setattr(totals, name, getattr(totals, name) + getattr(report, name))
        links += progress.link_map.values()
        labels.update({sid: label_name(d[-1]) for sid, d in progress.diagnoses.items()})
        diagnosed |= set(progress.diagnoses)
        dead_letters += len(progress.dead_letters)
        took += seconds
    report = totals
    policy = load_policy()
    pseudo_labels = {link["pseudonym"]: labels.get(link["study_id"], "") for link in links}
    measured = levels(policy, links, pseudo_labels)
    # Each study as its hospital knows it: the folder's study id (MP4), the Study Instance UID (DICOM).
    names = [load_truth(d)["identifiers"]["study_uid"] if i % 2 else d.name for i, d in enumerate(studies)]
    answered = sum(1 for name in names if name in diagnosed)
    summary = {
        "studies": len(studies),
        "dicom": sum(1 for i in range(len(studies)) if i % 2),
        "broken_uploads": broken,
        "answered": answered,
        "dead_letters": dead_letters,
        "seconds": round(took, 1),
        "audit": {
            "records": report.records,
            "blobs": report.blobs,
            "log_files": report.log_files,
            "metric_pages": report.metric_pages,
            "frames_ocred": report.frames_ocred,
            "hits": [f"{h.identifier} in {h.where}" for h in report.hits],
        },
        "anonymity": {
            "released": list(policy.anonymity.released),
            "k": measured.released.k,
            "l": measured.released.l_diversity,
            "classes": measured.released.classes,
            "finer": {", ".join(lv): {"k": m.k, "l": m.l_diversity, "below_k": m.below_k} for lv, m in measured.finer},
        },
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "audit_record.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    ok = report.clean and answered == len(studies)
    print(
        f"\n{len(studies)} studies ({summary['dicom']} DICOM, {len(broken)} broken), {answered} answered in "
        f"{took:.0f} s; audit: {report.records} records, {report.blobs} blobs, {report.log_files} logs, "
        f"{report.metric_pages} metric pages, {report.frames_ocred} frames OCR'd: {len(report.hits)} hits; "
        f"k = {measured.released.k}, l = {measured.released.l_diversity}: {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
