"""`rhd demo`: the whole line on one machine, a handful of studies in and their diagnoses out, shown to a person."""

import shutil
import time
from pathlib import Path

import aiohttp

from rhd.labels import CLASSES, CRITERIA
from rhd.local.publish import publish_uploads, raw_keyring, upload_from_dir
from rhd.local.stack import EmbeddedStack, ServiceProcess, stage_seconds
from rhd.runtime.blobs import BlobStore
from rhd.runtime.settings import Settings
from rhd.runtime.topics import STAGES
from rhd.watch.console import completeness_name, label_name
from rhd.watch.figures import Progress, follow


def corrupt_one_video(study_dir: Path) -> str:
    """Truncate one video to half its bytes: the bad input the line must survive. A B-mode video is
    chosen where there is one, so the study keeps colour Doppler frames and ends INCOMPLETE, not FAILED."""
    from rhd.synth.generator import load_truth

    videos = load_truth(study_dir)["videos"]
    chosen = next((v for v in videos if not v["doppler"]), videos[-1])
    video = study_dir / f"{chosen['video_id']}.mp4"
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 2])
    return str(chosen["video_id"])


def print_progress(progress: Progress, n_studies: int) -> None:
    expected = sum(progress.expected_frames.values())
    print(
        f"  frames accounted {progress.frames_accounted():5d}/{expected:<5d} "
        f"studies diagnosed {len(progress.diagnoses)}/{n_studies}  dead letters {len(progress.dead_letters)}",
        flush=True,
    )


# The WHF 2012 criteria as the table abbreviates them.
SHORT = {
    "pathological_mr": "MR",
    "pathological_ar": "AR",
    "mitral_stenosis": "MS",
    "mitral_features": "MV2",
    "aortic_features": "AV2",
}


def _criteria(met: dict[str, bool]) -> str:
    return ",".join(SHORT[c] for c in CRITERIA if met.get(c)) or "-"


def _measured(d) -> str:
    """The measurements behind each criterion the line found met, as a cardiologist would read them."""
    shown = []
    for c in d.criteria:
        m = dict(c.measurements)
        if not c.met or not m:
            continue
        if c.criterion == "pathological_mr":
            shown.append(
                f"MR {m['systolic_jet_length_mm_max']:.0f} mm in {m['views_with_systolic_jet']:.0f} views, "
                f"{m['mr_peak_velocity_m_s']:.1f} m/s, {m['mr_systolic_cover']:.0%} of systole"
            )
        elif c.criterion == "pathological_ar":
            shown.append(
                f"AR {m['diastolic_jet_length_mm_max']:.0f} mm, {m['ar_peak_velocity_m_s']:.1f} m/s, "
                f"{m['ar_diastolic_cover']:.0%} of diastole"
            )
        elif c.criterion == "mitral_stenosis":
            shown.append(f"MS {m['ms_mean_gradient_mmhg']:.1f} mmHg")
        elif c.criterion == "mitral_features":
            shown.append(
                f"MV AMVL {m['amvl_thickness_mm']:.1f} mm, chords {m['chord_thickness_mm']:.1f}, "
                f"opening {m['mitral_opening']:.2f}, tips {m['mitral_coaptation_mm']:+.1f} mm"
            )
        elif c.criterion == "aortic_features":
            shown.append(
                f"AV cusps {m['aortic_thickness_mm']:.1f}, opening {m['aortic_opening']:.2f}, "
                f"bow {m['aortic_closure_bow_mm']:.1f} mm, gap {m['aortic_gap_mm']:.1f} mm"
            )
    return "; ".join(shown)


def truth_measured(valves) -> str:
    """The generator's hidden values for the same measurements, printed under the line's own."""
    mr, ar, mv, av = valves.mr, valves.ar, valves.mitral, valves.aortic
    yes = {True: "yes", False: "no"}
    return (
        f"MR {mr.jet_length_mm:.0f} mm in {mr.views_seen} views, {mr.peak_velocity_m_s:.1f} m/s, "
        f"{mr.duration_fraction:.0%} of systole; AR {ar.jet_length_mm:.0f} mm, {ar.peak_velocity_m_s:.1f} m/s, "
        f"{ar.duration_fraction:.0%} of diastole; MS {valves.ms_mean_gradient_mmhg:.1f} mmHg; "
        f"MV AMVL {mv.amvl_thickness_mm:.1f} mm, chords {yes[mv.chordal_thickening]}, "
        f"restricted {yes[mv.restricted_motion]}, tips {yes[mv.excessive_tip_motion]}; "
        f"AV thickened {yes[av.irregular_thickening]}, coaptation defect {yes[av.coaptation_defect]}, "
        f"restricted {yes[av.restricted_motion]}, prolapse {yes[av.prolapse]}"
    )


def diagnosis_table(progress: Progress, truths: dict[str, dict]) -> str:
    """Each study's diagnosis beside the generator's truth: class, the WHF criteria met (found / true) and the
    measurements they rest on; a referral says why."""
    header = f"{'study':<12} {'truth':<10} {'diagnosis':<10} " + " ".join(f"{c[:5]:>6}" for c in CLASSES)
    header += f"  {'criteria found':<14} {'true':<14} {'status':<10} {'frames a/s/f of n':<18} measurements / reason"
    lines = [header, "-" * len(header)]
    for study_id in sorted(truths):
        truth = truths[study_id]
        for d in progress.diagnoses.get(study_id, []):
            probs = " ".join(f"{d.probabilities.get(c, 0.0):6.2f}" for c in CLASSES)
            f = d.frames
            counts = f"{f.analysed}/{f.skipped}/{f.failed} of {f.expected}"
            found = _criteria({c.criterion: c.met for c in d.criteria}) if d.criteria else "?"
            label = "referred" if d.referred else label_name(d.label)
            said = d.referral if d.referred else _measured(d) or d.reason
            if d.reason and said != d.reason:
                said += f"; {d.reason}"
            lines.append(
                f"{study_id:<12} {truth['label']:<10} {label:<10} {probs}  {found:<14} {_criteria(truth['met']):<14} "
                f"{completeness_name(d.completeness):<10} {counts:<18} {said[:110]}"
            )
        if study_id not in progress.diagnoses:
            lines.append(f"{study_id:<12} {truth['label']:<10} (no diagnosis)")
        if "measured" in truth:
            lines.append(f"{'':<12} truth: {truth['measured']}")
    return "\n".join(lines)


async def stage_figures(services: list[ServiceProcess]) -> dict[str, tuple[float, float]]:
    """Per stage: messages handled and busy seconds, scraped from each service's /metrics."""
    figures: dict[str, tuple[float, float]] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http:
        for service in services:
            if not service.http_port:
                continue
            count, seconds = await stage_seconds(http, service.http_port, path=service.metrics_path)
            old = figures.get(service.name, (0.0, 0.0))
            figures[service.name] = (old[0] + count, old[1] + seconds)
    return figures


async def run_demo(settings: Settings, n_studies: int, seed: int, workdir: Path) -> int:
    from rhd.synth.criteria import Valves, criteria_met
    from rhd.synth.generator import SynthConfig, load_truth, synth_studies

    started = time.monotonic()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)  # noqa: ASYNC240 - before anything runs
    settings = settings.model_copy(
        update={"blob_dir": workdir / "blobs", "study_deadline_s": 120.0, "model_retry_for_s": 30.0}
    )
    print(f"generating {n_studies} synthetic studies (seed {seed})", flush=True)
    # The screening protocol's first 10 videos of 1-2 s: every view, B-mode and colour, in a demo of minutes.
    config = SynthConfig(videos_per_study=10, duration_s=(1.0, 2.0))
    study_dirs = synth_studies(seed, n_studies, workdir / "studies", config, balanced=True)
    truths = {}
    for d in study_dirs:
        truth = load_truth(d)
        valves = Valves.from_dict(truth["valves"])
        truths[d.name] = {"label": truth["label"], "met": criteria_met(valves), "measured": truth_measured(valves)}
    bad_video = corrupt_one_video(study_dirs[-1])
    print(
        f"  video {bad_video} truncated on purpose (bad input); study {study_dirs[0].name} "
        "will be published twice (redelivery)",
        flush=True,
    )

    stack = EmbeddedStack(workdir, settings)
    print(f"starting broker, model server and {len(STAGES)} stages as separate processes ...", flush=True)
    try:
        live = await stack.start()
        print(f"  ready in {time.monotonic() - started:.1f} s (broker {live.bootstrap_servers})", flush=True)
        blobs = BlobStore(live.blob_dir)
        seal = raw_keyring(live).seal  # the blob store holds raw videos sealed only
        uploads = [upload_from_dir(d, blobs, live.max_message_bytes, seal=seal) for d in study_dirs]
        uploads.append(upload_from_dir(study_dirs[0], blobs, live.max_message_bytes, seal=seal))
        published = time.monotonic()
        await publish_uploads(live, uploads)
        print(f"published {len(uploads)} uploads of {n_studies} studies", flush=True)

        last_print = [0.0]

        def show(progress: Progress) -> None:
            if time.monotonic() - last_print[0] >= 2.0:
                last_print[0] = time.monotonic()
                print_progress(progress, n_studies)

        def finished(progress: Progress) -> bool:
            expected = sum(progress.expected_frames.values())
            return (
                len(progress.diagnoses) == n_studies
                and len(progress.expected_frames) == n_studies
                and progress.frames_accounted() == expected
            )

        progress = await follow(live, finished, timeout_s=600, on_update=show, settle_s=3.0)
        line_seconds = time.monotonic() - published
        print_progress(progress, n_studies)
        figures = await stage_figures(stack.services)
    finally:
        codes = stack.stop()
    print()
    print(diagnosis_table(progress, truths))
    print()
    for letter in progress.dead_letters:
        print(f"dead letter [{letter.source_topic}.dlq] {letter.stage}: {letter.reason}")
    frames = progress.frames_accounted()
    print(
        f"\nline: {frames} frames of {n_studies} studies in {line_seconds:.1f} s "
        f"= {frames / line_seconds:.1f} frames/s end to end; demo wall time {time.monotonic() - started:.1f} s"
    )
    for stage, (count, seconds) in figures.items():
        if count:
            print(
                f"  {stage:<9} {int(count):5d} messages, {1000 * seconds / count:7.2f} ms each "
                f"= {count / seconds:8.1f} messages/s per busy worker"
            )
    once = all(len(v) == 1 for v in progress.diagnoses.values())
    ok = finished(progress) and once and stack.all_stopped()
    print(
        f"\nevery study diagnosed once: {once and len(progress.diagnoses) == n_studies}; "
        f"every frame accounted: {frames == sum(progress.expected_frames.values())}; "
        f"all processes stopped: {stack.all_stopped()} (exit codes {codes})"
    )
    return 0 if ok else 1
