"""`rhd`: serve a stage, run the embedded stack, publish, watch, generate data, train models."""

import argparse
import asyncio
import datetime as dt
import importlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

# TensorFlow's C++ start-up chatter (no CUDA on CPU machines) hides the service logs; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from rhd.runtime.settings import get_settings
from rhd.runtime.topics import STAGES

DEMO_WORKDIR = "var/demo"  # `rhd demo`'s stack, whose targets.json `rhd watch` reads by default
UP_WORKDIR = "var/up"  # `rhd up`'s stack: its broker data, frame store, web database, logs, services.json


def _logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("aiokafka", "kafka", "pynetdicom"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def cmd_serve(args: argparse.Namespace) -> int:
    from rhd.runtime.stage import run_stage

    service = importlib.import_module(f"rhd.{args.stage}.service").build()
    run_stage(service, get_settings())
    return 0


def cmd_model_server(args: argparse.Namespace) -> int:
    from rhd.model_server.server import (
        BatchingOptions,
        metrics_path,
        read_batching_parameters,
        read_model_config,
        read_monitoring_config,
        read_ssl_config,
        serve,
    )

    if args.batching_parameters_file and not args.enable_batching:
        # tensorflow/serving refuses this too: the file would silently do nothing.
        raise SystemExit("rhd model-server: --batching-parameters-file is set without --enable-batching")
    settings = get_settings()
    try:
        model_config = read_model_config(Path(args.model_config_file)) if args.model_config_file else None
        batching = None
        if args.batching_parameters_file:
            batching = read_batching_parameters(Path(args.batching_parameters_file))
        elif args.enable_batching:
            batching = BatchingOptions()  # TensorFlow's defaults, as tensorflow/serving without the file
        monitoring = read_monitoring_config(Path(args.monitoring_config_file)) if args.monitoring_config_file else None
        ssl = read_ssl_config(Path(args.ssl_config_file)) if args.ssl_config_file else None
    except (OSError, ValueError) as exc:
        raise SystemExit(f"rhd model-server: {exc}") from None
    if monitoring is not None and not args.rest_api_port:
        # tensorflow/serving starts anyway, without metrics: say so rather than leave a scraper guessing.
        logging.getLogger("rhd.model_server").warning("--monitoring-config-file without --rest-api-port: no metrics")

    async def run() -> None:
        task = asyncio.ensure_future(
            serve(
                Path(args.models_dir or settings.models_dir),
                args.host,
                args.port,
                model_config=model_config,
                batching=batching,
                ssl=ssl,
                rest_api_port=args.rest_api_port,
                metrics=metrics_path(monitoring),
            )
        )
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass

    try:
        asyncio.run(run())
    except (OSError, ValueError) as exc:  # nothing to serve (no models dir, a configured model without versions)
        raise SystemExit(f"rhd model-server: {exc}") from None
    return 0


def cmd_model_server_tls(args: argparse.Namespace) -> int:
    from rhd.local.security import write_ssl_config

    try:
        write_ssl_config(Path(args.key), Path(args.cert), Path(args.out))
    except (OSError, ValueError) as exc:
        raise SystemExit(f"rhd model-server-tls: {exc}") from None
    print(f"SSLConfig for TF Serving's --ssl_config_file written to {args.out}")
    return 0


def cmd_manifests(args: argparse.Namespace) -> int:
    from rhd.local.manifests import kafka_users_yaml

    hospitals = args.hospital if args.hospital is not None else get_settings().hospitals
    print(kafka_users_yaml(hospitals, args.region, args.cluster), end="")
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    from rhd.local.broker import broker_for

    settings = get_settings()
    if args.kafka or args.secure:
        settings = settings.model_copy(update={"broker": "kafka"})
    if args.secure:
        settings = settings.model_copy(update={"broker_secure": True, "hospitals": args.hospital or settings.hospitals})

    async def run() -> None:
        broker = broker_for(settings, Path(args.data_dir), host=args.host, port=args.port)
        # Everything after the process starts is inside the try: a SIGTERM that lands just after "ready" is
        # printed (or while it starts) must still stop it.
        try:
            await broker.start(settings.partitions)
            where = "loopback only" if args.host in ("127.0.0.1", "localhost", "::1") else f"listening on {args.host}"
            storage = (
                f"records on disk under {Path(args.data_dir) / 'kafka'}, kept across restarts"
                if broker.kind == "kafka"
                else "records in memory only, lost when it stops"
            )
            auth = (
                f"SASL_SSL with SCRAM-SHA-512: CA, passwords (one per service and hospital) and ACLs under "
                f"{broker.security.root}"
                if broker.security
                else "no authentication"
            )
            print(
                f"{broker.kind} broker ready at {broker.bootstrap_servers} ({where}, {auth}; {storage}). "
                "Ctrl-C stops it",
                flush=True,
            )
            await asyncio.to_thread(broker.process.wait)  # type: ignore[union-attr]
        finally:
            broker.stop()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    return 0


def cmd_topics(_: argparse.Namespace) -> int:
    from rhd.runtime.topics import GPU, HOME, ensure_topics, region_topics

    settings = get_settings()
    region = HOME if settings.region == settings.home_region else GPU
    names = region_topics(region, settings.hospitals) if settings.two_regions else None
    created = asyncio.run(ensure_topics(settings, names=names))
    print(f"{len(created)} topics created on {settings.bootstrap_servers}")
    return 0


def _synth_config(args: argparse.Namespace):
    """--config FILE.json then each --set KEY=VALUE (VALUE read as JSON, else as a string)."""
    from rhd.synth.generator import SynthConfig

    overrides: dict = json.loads(Path(args.config).read_text()) if args.config else {}
    for item in args.set or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        try:
            overrides[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key.strip()] = raw
    try:
        return SynthConfig.from_overrides(overrides)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"rhd synth: {exc}") from exc


def cmd_synth(args: argparse.Namespace) -> int:
    from rhd.synth.generator import synth_studies

    config = _synth_config(args)
    if args.preview:
        from rhd.synth.preview import write_contact_sheet

        print(f"contact sheet: {write_contact_sheet(Path(args.preview), args.seed, config)}")
        return 0
    counts = None
    if args.counts:
        counts = {k: int(v) for k, _, v in (part.partition("=") for part in args.counts.split(","))}
    started = time.perf_counter()
    paths = synth_studies(
        args.seed, args.studies, Path(args.out), config, balanced=args.balanced, counts=counts, dicom=args.dicom
    )
    elapsed = time.perf_counter() - started
    print(
        f"{len(paths)} studies written under {args.out} in {elapsed:.1f} s "
        f"(ground truth apart, in {Path(args.out) / 'truth'})"
    )
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from rhd.local.publish import publish_uploads, raw_keyring, upload_from_dir
    from rhd.runtime.blobs import BlobStore

    settings = get_settings()
    blobs = BlobStore(settings.blob_dir)
    try:
        seal = raw_keyring(settings).seal
        uploads = [
            upload_from_dir(Path(d), blobs, settings.max_message_bytes, args.hospital, seal) for d in args.study_dirs
        ]
    except ValueError as exc:
        raise SystemExit(f"rhd publish: {exc}") from None
    asyncio.run(publish_uploads(settings, uploads))
    for upload in uploads:
        inline = sum(v.HasField("inline_data") for v in upload.videos)
        print(
            f"published {len(upload.videos)} videos ({inline} inline), {upload.ByteSize()} bytes, "
            f"upload {upload.upload_id}"
        )
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from rhd.local.audit import audit, scrape_pages, tesseract_available
    from rhd.synth.generator import load_truth
    from rhd.watch.figures import read_targets

    settings = get_settings()
    identifiers = [load_truth(Path(d))["identifiers"] for d in args.studies]
    if args.ocr and not tesseract_available():
        raise SystemExit("rhd audit: --ocr needs tesseract (make tools)")
    pages = asyncio.run(scrape_pages(read_targets(Path(args.targets)))) if args.targets else {}
    report = asyncio.run(
        audit(
            settings,
            identifiers,
            blob_dir=settings.blob_dir if args.blobs else None,
            log_dir=Path(args.logs) if args.logs else None,
            metric_pages=pages,
            frames_to_ocr=args.ocr,
        )
    )
    print(
        f"audited {report.records} records, {report.blobs} blobs, {report.log_files} log files, "
        f"{report.metric_pages} metric pages, {report.frames_ocred} frames by OCR, for the identifiers of "
        f"{len(identifiers)} studies: {len(report.hits)} hits"
    )
    for hit in report.hits[:50]:
        print(f"  {hit.identifier} in {hit.where}")
    if args.json:
        summary = {
            "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "studies": len(identifiers),
            "records": report.records,
            "blobs": report.blobs,
            "log_files": report.log_files,
            "metric_pages": report.metric_pages,
            "frames_ocred": report.frames_ocred,
            "hits": len(report.hits),
            "where": sorted({hit.where for hit in report.hits}),
        }
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if report.clean else 1


def cmd_export(args: argparse.Namespace) -> int:
    from rhd.deid.policy import load_policy
    from rhd.local.export import write_export
    from rhd.runtime.secrets import load_pseudonym_key, require_home_region

    settings = get_settings()
    require_home_region(settings.region, settings.home_region, "rhd export")
    policy = load_policy(settings.deid_policy)
    profile = policy.profile(args.profile)
    if profile.region != "home":
        raise SystemExit(f"rhd export: profile {profile.name!r} is the line's; use research or clinician")
    key = load_pseudonym_key(settings.secrets_dir)
    count = write_export(Path(args.study), Path(args.out), args.hospital, policy, profile, key)
    print(f"{count} files under profile {profile.name} in {args.out}")
    return 0


def cmd_privacy_report(args: argparse.Namespace) -> int:
    from rhd.deid.policy import load_policy
    from rhd.local.privacy_report import levels, load_audit, read_inputs, report
    from rhd.runtime.secrets import LINK_KEYRING, load_keyring, require_home_region

    settings = get_settings()
    require_home_region(settings.region, settings.home_region, "rhd privacy-report")
    policy = load_policy(settings.deid_policy)
    links, labels = asyncio.run(read_inputs(settings, load_keyring(settings.secrets_dir / LINK_KEYRING)))
    text = report(policy, levels(policy, links, labels), load_audit(args.audit), settings.deid_profile)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from rhd.local.relink import csv_text, results, results_table, serve_results, write_private
    from rhd.runtime.secrets import RegionError, SecretError

    if args.serve:

        async def serve() -> int:
            stop = asyncio.Event()
            for signum in (signal.SIGTERM, signal.SIGINT):  # finish the batch in hand, commit, then stop
                asyncio.get_running_loop().add_signal_handler(signum, stop.set)
            return await serve_results(get_settings(), stop)

        try:
            delivered = asyncio.run(serve())
        except (RegionError, SecretError, ValueError) as exc:
            raise SystemExit(f"rhd results --serve: {exc}") from None
        print(f"{delivered} results delivered to the hospitals' topics")
        return 0
    if not args.hospital:
        raise SystemExit("rhd results: name the hospital (--hospital), or --serve")
    try:
        rows, waiting = asyncio.run(results(get_settings(), args.hospital, args.user, args.purpose))
    except (RegionError, SecretError) as exc:
        raise SystemExit(f"rhd results: {exc}") from None
    if args.out:
        write_private(Path(args.out), csv_text(rows))
        print(f"{len(rows)} diagnoses of {args.hospital} written to {args.out}")
    else:
        print(results_table(rows))
    print(f"{waiting} studies of {args.hospital} without a diagnosis yet; this read is in the access trail")
    return 0


def cmd_erase(args: argparse.Namespace) -> int:
    from rhd.deid.ops import CNS_LENGTH
    from rhd.local.relink import erase
    from rhd.runtime.secrets import RegionError, SecretError

    if args.cns and not (len(args.cns) == CNS_LENGTH and args.cns.isdigit()):
        raise SystemExit(f"rhd erase: --cns takes the {CNS_LENGTH}-digit national health card number")
    ids = [i for i in (args.patient_id, args.cns) if i]
    try:
        done = asyncio.run(erase(get_settings(), args.hospital, ids, args.user, args.purpose))
    except (RegionError, SecretError, ValueError) as exc:
        raise SystemExit(f"rhd erase: {exc}") from None
    print(
        f"erased {len(done.studies)} studies of the patient at {args.hospital}: their links tombstoned, "
        f"{done.blobs_deleted} video blobs deleted; recorded in the access trail"
    )
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    from rhd.local import dlq
    from rhd.runtime.secrets import RegionError, SecretError

    settings = get_settings()
    try:
        letters = dlq.select(
            asyncio.run(dlq.read_letters(settings, args.topic)), args.stage, args.study, getattr(args, "letter", "")
        )
        if args.action == "list":
            print(dlq.table(letters), end="")
        elif args.action == "show":
            if not letters:
                raise SystemExit(f"rhd dlq show: no letter {args.letter}")
            print(dlq.describe(letters[0]), end="")
        else:
            if not (args.letter or args.topic or args.stage or args.study or args.all):
                raise SystemExit("rhd dlq replay: name a letter, or --topic/--stage/--study, or --all")
            for letter, what in asyncio.run(dlq.replay(settings, letters, args.dry_run)):
                print(f"{letter.where}: {what}")
    except (ValueError, RegionError, SecretError) as exc:
        raise SystemExit(f"rhd dlq: {exc}") from None
    return 0


def cmd_access_trail(args: argparse.Namespace) -> int:
    from rhd.local.relink import access_trail, trail_lines
    from rhd.runtime.secrets import RegionError, SecretError

    try:
        entries = asyncio.run(access_trail(get_settings(), args.hospital or ""))
    except (RegionError, SecretError) as exc:
        raise SystemExit(f"rhd access-trail: {exc}") from None
    print("\n".join(trail_lines(entries)) if entries else "no entries")
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    from rhd.local.gateway import GatewayConfig, run_gateway

    senders = dict(part.split("=", 1) for part in args.allow)
    if not senders:
        raise SystemExit("rhd gateway: name at least one sender: --allow CALLING_AE=HOSPITAL_ID")
    config = GatewayConfig(
        port=args.port,
        ae_title=args.ae_title,
        senders=senders,
        idle_s=args.idle_s,
        spool=Path(args.spool),
        host=args.host,
        tls_cert=Path(args.tls_cert) if args.tls_cert else None,
        tls_key=Path(args.tls_key) if args.tls_key else None,
        tls_client_ca=Path(args.tls_client_ca) if args.tls_client_ca else None,
    )
    asyncio.run(run_gateway(get_settings(), config))
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from rhd.runtime.secrets import init_secrets, load_keyring, rotate

    directory = Path(args.dir) if args.dir else get_settings().secrets_dir
    if args.action == "init":
        created = init_secrets(directory)
        print(f"{directory}: created {', '.join(created)}" if created else f"{directory}: every key already there")
        return 0
    if not args.ring:
        raise SystemExit("rhd keys rotate: name the keyring (raw or link)")
    ring = load_keyring(directory / args.ring)
    kid = f"k{1 + max(int(k[1:]) for k in ring.keys if k[1:].isdigit())}"
    rotate(directory / args.ring, kid)
    print(f"{directory / args.ring}: new envelopes are sealed with {kid}; {', '.join(sorted(ring.keys))} still open")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    if args.diagnoses:
        from rhd.watch.console import watch_diagnoses

        asyncio.run(watch_diagnoses(get_settings(), 3600.0 if args.seconds is None else args.seconds))
        return 0
    from rhd.watch.console import watch_metrics
    from rhd.watch.figures import parse_target, read_targets

    try:
        named = [parse_target(text) for text in args.target or []]
    except ValueError as exc:
        raise SystemExit(f"rhd watch: {exc}") from None
    # --target alone names every target; with neither flag, the embedded stack's file is read.
    targets_file = args.targets_file or (None if named else str(Path(DEMO_WORKDIR) / "targets.json"))

    def targets() -> list:
        try:
            return named + (read_targets(Path(targets_file)) if targets_file else [])
        except OSError as exc:
            raise ValueError(f"{targets_file}: {exc.strerror}") from None

    try:
        return asyncio.run(watch_metrics(targets, args.interval, once=args.once, seconds=args.seconds))
    except ValueError as exc:  # --once without targets to read
        raise SystemExit(f"rhd watch: {exc} (is `rhd demo` running? or name targets with --target)") from None
    except KeyboardInterrupt:
        return 0


def cmd_train(args: argparse.Namespace) -> int:
    models_dir = Path(args.models_dir or get_settings().models_dir)
    if args.model in ("view", "all"):
        from rhd.training.view import train_view_model

        print(f"view model: {train_view_model(models_dir, version=args.version)}")
    if args.model in ("valve", "all"):
        from rhd.training.valve import train_valve_model

        print(f"valve model: {train_valve_model(models_dir, version=args.version)}")
    if args.model in ("video", "all"):
        _train_video(args, models_dir)
    if args.model in ("study", "all"):
        from rhd.training.study import train_study_model

        out = train_study_model(
            models_dir,
            seed=args.seed,
            n_studies=args.studies,
            version=args.version,
            workers=args.workers,
            held_out_per_class=args.held_out_per_class,
            report_dir=Path(args.report_dir) if args.report_dir else None,
            cache=Path(args.cache) if args.cache else None,
        )
        print(f"study model: {out} (report: {out / 'report.md'})")
    return 0


def _train_video(args: argparse.Namespace, models_dir: Path) -> None:
    from rhd.training.video import (
        cluster_from_env,
        launch_local_workers,
        train_video_model,
        video_ablation,
        write_ablation,
    )

    report = Path(args.worker_report) if args.worker_report else None
    if args.ablation_only:
        out: Path | None = models_dir / "video" / str(args.version)
    elif args.train_workers > 1 and cluster_from_env() is None:
        child = ["train", "video", "--models-dir", str(models_dir), "--version", str(args.version)]
        child += ["--video-seed", str(args.video_seed), "--video-studies", str(args.video_studies)]
        child += ["--video-held-out", str(args.video_held_out), "--epochs", str(args.epochs)]
        child += ["--precision", args.precision, *(["--worker-report", str(report)] if report else [])]
        code = launch_local_workers(child, args.train_workers)
        if code:
            raise SystemExit(f"rhd train video: a worker exited with {code}")
        out = models_dir / "video" / str(args.version)  # the chief has said where it wrote it
    else:
        out = train_video_model(
            models_dir,
            seed=args.video_seed,
            version=args.version,
            n_studies=args.video_studies,
            held_out=args.video_held_out,
            epochs=args.epochs,
            precision=args.precision,
            worker_report=report,
        )
        if out is not None:
            print(f"video model: {out} (report: {out / 'report.md'})")
    if out is None:
        return  # a worker other than the chief: the chief writes the model
    if args.ablation or args.ablation_only:
        result = video_ablation(
            models_dir,
            args.version,
            seed=args.seed,
            n_studies=args.studies,
            held_out_per_class=args.held_out_per_class,
            workers=args.workers,
            cache=Path(args.cache) if args.cache else None,
        )
        write_ablation(out, result, Path(args.report_dir) if args.report_dir else None)
        d = result["balanced_accuracy_difference"]
        print(
            f"ablation: balanced accuracy {d['value']:+.3f} (95% CI {d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f}): "
            + ("it helps" if result["helps"] else "it does not help; not used")
        )


def cmd_demo(args: argparse.Namespace) -> int:
    from rhd.local.demo import run_demo

    return asyncio.run(run_demo(get_settings(), args.studies, args.seed, Path(args.workdir)))


def _replicas(items: list[str]) -> dict[str, int]:
    from rhd.runtime.topics import STAGES

    replicas = {}
    for item in items:
        stage, _, count = item.partition("=")
        if stage not in STAGES or not count.isdigit() or int(count) < 1:
            raise SystemExit(f"--replicas {item!r}: STAGE=N with a stage of {', '.join(STAGES)} and N >= 1")
        replicas[stage] = int(count)
    return replicas


def _web_db(given: str | None, workdir: Path) -> str:
    """The web page's database: --db, else RHD_WEB_DB, else web.sqlite in the stack's working directory."""
    from rhd.web.db import is_server_address

    where = given or get_settings().web_db or str(workdir / "web.sqlite")
    return where if is_server_address(where) else str(Path(where).resolve())


def cmd_up(args: argparse.Namespace) -> int:
    from rhd.local.up import run_up
    from rhd.web.db import first_users

    settings, workdir = get_settings(), Path(args.workdir).resolve()
    hospital = settings.hospitals[0] if settings.hospitals else "H001"
    db = _web_db(args.db, workdir)
    users = first_users(db, hospital, workdir / "first-users.tsv")
    return asyncio.run(run_up(settings, workdir, _replicas(args.replicas), args.host, args.port, users, db))


def cmd_ps(args: argparse.Namespace) -> int:
    from rhd.local.up import ps_table

    print(ps_table(Path(args.workdir)))
    return 0


def cmd_web(args: argparse.Namespace) -> int:
    from rhd.web.app import serve
    from rhd.web.db import backup_path

    db = _web_db(args.db, Path(args.workdir))
    asyncio.run(
        serve(
            get_settings(),
            db,
            backup_path(db, Path(args.workdir)),
            args.host,
            args.port,
            Path(args.tls) if args.tls else None,
            Path(args.services) if args.services else None,
            args.grafana_url,
            args.prometheus_url,
        )
    )
    return 0


def cmd_users(args: argparse.Namespace) -> int:
    import getpass

    from rhd.web.db import Database

    password = os.environ.get("RHD_NEW_USER_PASSWORD") or getpass.getpass(f"password for {args.name}: ")
    db = Database(_web_db(args.db, Path(args.workdir)))
    try:
        user = db.add_user(args.name, args.hospital, args.role, password)
    finally:
        db.close()
    print(f"user {user.name}: {user.role} of {user.hospital}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rhd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run one stage as a service (scale by running more copies)")
    p.add_argument("stage", choices=STAGES)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("model-server", help="the embedded TensorFlow Serving gRPC API over models/")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8500)
    p.add_argument(
        "--models-dir",
        default=None,
        help="where models/<name>/<version>/ live (RHD_MODELS_DIR); "
        "relative base_paths of --model-config-file are under it",
    )
    p.add_argument(
        "--model-config-file",
        default=None,
        metavar="PATH",
        help="TF Serving's --model_config_file: text-format ModelServerConfig (names, base paths, version "
        "policies); without it every version of every model in the models dir is served",
    )
    p.add_argument(
        "--enable-batching",
        action="store_true",
        help="TF Serving's --enable_batching: merge concurrent Predict requests into one signature call",
    )
    p.add_argument(
        "--batching-parameters-file",
        default=None,
        metavar="PATH",
        help="TF Serving's --batching_parameters_file: text-format BatchingParameters",
    )
    p.add_argument(
        "--rest-api-port",
        type=int,
        default=0,
        metavar="PORT",
        help="TF Serving's --rest_api_port (0, the default: none): HTTP with the Prometheus metrics, "
        "/healthz and /readyz (no REST inference API)",
    )
    p.add_argument(
        "--ssl-config-file",
        default=None,
        metavar="PATH",
        help="TF Serving's --ssl_config_file: text-format SSLConfig (server_key, server_cert: PEM texts; custom_ca, "
        "client_verify): the gRPC port over TLS",
    )
    p.add_argument(
        "--monitoring-config-file",
        default=None,
        metavar="PATH",
        help="TF Serving's --monitoring_config_file: text-format MonitoringConfig, e.g. prometheus_config "
        '{ enable: true path: "/monitoring/prometheus/metrics" }. Without it the REST port still serves '
        "the metrics at /monitoring/prometheus/metrics (tensorflow/serving serves none)",
    )
    p.set_defaults(func=cmd_model_server)

    p = sub.add_parser(
        "broker",
        help="run a broker of the project's own with every topic: Tansu (the zero-install default) or, with --kafka "
        "or RHD_BROKER=kafka, Apache Kafka in KRaft mode (`make kafka` first)",
    )
    p.add_argument("--host", default="127.0.0.1", help="the address it listens on (default: loopback only)")
    p.add_argument("--port", type=int, default=9092)
    p.add_argument("--kafka", action="store_true", help="Apache Kafka 4 (KRaft) instead of Tansu")
    p.add_argument(
        "--secure",
        action="store_true",
        help="Apache Kafka with SASL_SSL, a principal per service and per --hospital, ACLs (under the data dir)",
    )
    p.add_argument("--hospital", action="append", metavar="ID", help="with --secure: a hospital that may upload")
    p.add_argument("--data-dir", default="var/broker", help="Apache Kafka's storage goes under it (var/broker)")
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser(
        "model-server-tls",
        help="write TF Serving's --ssl_config_file (text-format SSLConfig) from a PEM key and certificate chain",
    )
    p.add_argument("--key", required=True, help="the server's private key (PEM), e.g. a TLS Secret's tls.key")
    p.add_argument("--cert", required=True, help="its certificate chain (PEM), e.g. the Secret's tls.crt")
    p.add_argument("--out", required=True, help="the file to write (mode 0600)")
    p.set_defaults(func=cmd_model_server_tls)

    p = sub.add_parser(
        "manifests",
        help="Kubernetes resources made from the line's lists: `kafka-users`, the Strimzi KafkaUser of every principal "
        "with its ACLs (k8s/kafka/users.yaml, k8s/regions/*/users.yaml)",
    )
    p.add_argument("what", choices=["kafka-users"])
    p.add_argument("--region", choices=["home", "gpu"], help="one region's cluster (default: the one-cluster line)")
    p.add_argument("--hospital", action="append", metavar="ID", help="a hospital that uploads (default RHD_HOSPITALS)")
    p.add_argument("--cluster", default="rhd", help="the Strimzi Kafka cluster's name (label strimzi.io/cluster)")
    p.set_defaults(func=cmd_manifests)

    p = sub.add_parser(
        "topics", help="create every topic and its .dlq on RHD_BOOTSTRAP_SERVERS (two regions: the region's)"
    )
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("synth", help="generate synthetic studies with ground truth")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--studies", type=int, default=5)
    p.add_argument("--out", default="demo-data")
    p.add_argument("--balanced", action="store_true", help="equal classes instead of PROVAR prevalence")
    p.add_argument("--counts", help="stratified: exact studies per class, e.g. normal=100,borderline=100,definite=100")
    p.add_argument("--config", help="JSON file of knob overrides (see docs/synth.md)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="one knob, e.g. noise=1.6 or nyquist_cm_s=[40,50] or disease.near_threshold_share=0.6; repeatable",
    )
    p.add_argument(
        "--preview",
        nargs="?",
        const="synth-preview.png",
        metavar="PNG",
        help="write a contact sheet (one frame per view, B-mode and Doppler, each class) and stop",
    )
    p.add_argument(
        "--dicom",
        action="store_true",
        help="also write each video as an echo machine sends it (Ultrasound Multi-frame DICOM, identifying "
        "attributes, JPEG baseline or explicit VR little endian) under <study>/dicom/",
    )
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser(
        "publish",
        help="publish study folders (MP4 + study.json, or one study's DICOM files) to studies.uploaded.v1",
    )
    p.add_argument("study_dirs", nargs="+")
    p.add_argument("--hospital", default="", help="the sending hospital's id (DICOM folders carry none)")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser(
        "audit",
        help="look for every identifier of generated studies outside the raw topic: topics (dead letters "
        "included), blobs, logs, metric labels, and frames by OCR; exits 1 on a hit",
    )
    p.add_argument("studies", nargs="+", help="generated study folders (their truth lists the identifiers)")
    p.add_argument("--blobs", action="store_true", help="read the blob store (RHD_BLOB_DIR) too")
    p.add_argument("--logs", help="a directory of the services' *.log files")
    p.add_argument("--targets", help="a Prometheus file_sd JSON of the services to scrape for metric labels")
    p.add_argument("--ocr", type=int, default=0, metavar="N", help="OCR up to N decoded frames (tesseract)")
    p.add_argument("--json", help="write the audit's summary here (what `rhd privacy-report --audit` reads)")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser(
        "export",
        help="home region: one study's DICOM files under a home profile of the policy (research: pseudonymised, "
        "dates shifted; clinician: everything)",
    )
    p.add_argument("study", help="a folder of one study's DICOM files")
    p.add_argument("--profile", default="research")
    p.add_argument("--hospital", required=True, help="the hospital the study is from (keys the pseudonyms)")
    p.add_argument("--out", required=True, help="the folder to write the files to (mode 0600)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "privacy-report",
        help="home region: an LGPD / GDPR self-assessment from the policy, the measured k and l, and the last audit",
    )
    p.add_argument("--audit", help="the JSON summary `rhd audit --json` wrote")
    p.add_argument("--out", help="write the Markdown here (default: print it)")
    p.set_defaults(func=cmd_privacy_report)

    p = sub.add_parser(
        "results",
        help="home region: a hospital's diagnoses under its own study ids and accession numbers (recorded in the "
        "access trail)",
    )
    p.add_argument("--hospital", help="the hospital's id, as its uploads name it")
    p.add_argument(
        "--serve",
        action="store_true",
        help="run until SIGTERM: deliver each new diagnosis of a hospital in RHD_HOSPITALS to its own results topic, "
        "studies.results.<id>.v1, which only it may read (each delivery in the access trail)",
    )
    p.add_argument("--out", help="write a CSV (mode 0600) instead of printing")
    p.add_argument("--user", default="", help="who reads (default: the OS user)")
    p.add_argument("--purpose", default="", help="why, for the access trail")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser(
        "erase",
        help="home region, LGPD erasure: tombstone every link of a patient at a hospital, delete their videos' blobs",
    )
    p.add_argument("--hospital", required=True)
    p.add_argument("--patient-id", default="", help="the hospital's patient ID (or the CNS) as its uploads sent it")
    p.add_argument("--cns", default="", help="the patient's national health card number (15 digits)")
    p.add_argument("--user", default="", help="who erases (default: the OS user)")
    p.add_argument("--purpose", default="LGPD erasure request", help="why, for the access trail")
    p.set_defaults(func=cmd_erase)

    p = sub.add_parser("dlq", help="dead letters: list them, show one, replay them once the cause is fixed")
    dlq_actions = p.add_subparsers(dest="action", required=True)
    for action, helptext in (
        ("list", "every dead letter (or those of --topic, --stage, --study), oldest first per partition"),
        ("show", "one letter in full: LETTER as list names it, <topic>.dlq[<partition>]@<offset>"),
        ("replay", "write the originals back to the topics they came from (diagnoses are never duplicated)"),
    ):
        q = dlq_actions.add_parser(action, help=helptext)
        q.add_argument("--topic", default="", help="only the letters of this topic (its .dlq)")
        q.add_argument("--stage", default="", help="only the letters of this stage")
        q.add_argument("--study", default="", help="only the letters of this study (its pseudonym)")
        if action in ("show", "replay"):
            q.add_argument("letter", nargs="?" if action == "replay" else None, default="", help="one letter")
        if action == "replay":
            q.add_argument("--dry-run", action="store_true", help="say what would be replayed, write nothing")
            q.add_argument("--all", action="store_true", help="every letter (without a letter or a filter)")
        q.set_defaults(func=cmd_dlq)

    p = sub.add_parser("access-trail", help="home region: who read re-linked results or erased a patient, and why")
    p.add_argument("--hospital", default="", help="only this hospital's entries")
    p.set_defaults(func=cmd_access_trail)

    p = sub.add_parser(
        "gateway", help="the home region's DICOM C-STORE SCP: studies from echo machines and PACS, sealed, published"
    )
    p.add_argument("--port", type=int, default=11112)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--ae-title", default="RHD-GATEWAY")
    p.add_argument("--allow", action="append", default=[], metavar="CALLING_AE=HOSPITAL_ID", help="repeatable")
    p.add_argument("--idle-s", type=float, default=30.0, help="a study is complete after this long without instances")
    p.add_argument("--spool", default="var/gateway", help="where instances wait, sealed, until their study is sent")
    p.add_argument("--tls-cert", help="the gateway's certificate (PEM): TLS only")
    p.add_argument("--tls-key", help="its private key (PEM)")
    p.add_argument("--tls-client-ca", help="require senders' certificates signed by this CA (PEM)")
    p.set_defaults(func=cmd_gateway)

    p = sub.add_parser("keys", help="the keys for identifiable data (pseudonyms, sealed uploads, the re-link map)")
    p.add_argument("action", choices=["init", "rotate"])
    p.add_argument("ring", nargs="?", choices=["raw", "link"], help="rotate: the keyring to add a key to")
    p.add_argument("--dir", help="the secrets directory (default: RHD_SECRETS_DIR)")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser(
        "watch",
        help="the monitoring dashboard's figures live in the terminal, scraped from each "
        "service's metrics; or, with --diagnoses, each diagnosis as it arrives",
    )
    p.add_argument(
        "--targets-file",
        default=None,
        metavar="PATH",
        help="Prometheus file_sd JSON of the services' metrics endpoints; default "
        f"{DEMO_WORKDIR}/targets.json (written by the embedded stack) unless --target is given",
    )
    p.add_argument(
        "--target",
        action="append",
        metavar="JOB=HOST:PORT[/PATH]",
        help="one endpoint, e.g. view=10.0.0.5:8080 or model-server=tf-serving:8501 (path "
        "/monitoring/prometheus/metrics for model-server, /metrics otherwise); repeatable, replicas of a "
        "job are summed",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=2.0,
        help="seconds between scrapes; rates and quantiles are over the last interval",
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="print one snapshot as plain text (two scrapes an interval apart) and exit; 1 when no target answered",
    )
    p.add_argument(
        "--seconds", type=float, default=None, help="stop after this long (default: until Ctrl-C; --diagnoses: 3600)"
    )
    p.add_argument(
        "--diagnoses",
        action="store_true",
        help="instead, follow the broker and print each diagnosis as it arrives (RHD_BOOTSTRAP_SERVERS)",
    )
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("train", help="train the models (deterministic) into models/")
    p.add_argument("model", choices=("view", "valve", "video", "study", "all"))
    p.add_argument("--models-dir", default=None)
    p.add_argument("--version", type=int, default=1, help="the version folder written: models/<name>/<version>/")
    p.add_argument("--seed", type=int, default=11, help="study model: training set seed (held-out: seed + 1000)")
    p.add_argument("--studies", type=int, default=90, help="study model: balanced training studies")
    p.add_argument(
        "--held-out-per-class",
        type=int,
        default=10,
        help="study model: held-out studies of each class for the report (issue 7's targets: >= 100)",
    )
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes computing features")
    p.add_argument("--report-dir", default=None, help="also write the report (Markdown + PNG) here")
    p.add_argument(
        "--cache", default=None, help="study model: keep the studies' feature rows here and reuse them when asked again"
    )
    p.add_argument("--video-seed", type=int, default=21, help="video model: training set seed (held-out: seed + 1000)")
    p.add_argument("--video-studies", type=int, default=40, help="video model: balanced training studies")
    p.add_argument("--video-held-out", type=int, default=8, help="video model: held-out studies for its figures")
    p.add_argument("--epochs", type=int, default=12, help="video model: epochs")
    p.add_argument(
        "--train-workers",
        type=int,
        default=1,
        help="video model: worker processes training it together on this machine (tf.distribute multi-worker; on a "
        "cluster, TF_CONFIG or RHD_TRAIN_WORKER_HOSTS and JOB_COMPLETION_INDEX instead)",
    )
    p.add_argument("--precision", choices=("fp32", "mixed"), default="fp32", help="video model: mixed on GPUs")
    p.add_argument("--worker-report", default=None, help="video model: each worker writes what it read and its weights")
    p.add_argument(
        "--ablation",
        action="store_true",
        help="video model: then the study decision with and without it on the study model's sets (--seed, --studies, "
        "--held-out-per-class, --cache), into its report",
    )
    p.add_argument("--ablation-only", action="store_true", help="video model: the ablation of --version, no training")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="start everything, publish studies, show diagnoses, stop everything")
    p.add_argument("--studies", type=int, default=6)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--workdir", default=DEMO_WORKDIR)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("up", help="the whole line as a long-running stack with the web page; Ctrl-C stops it")
    p.add_argument("--workdir", default=UP_WORKDIR)
    p.add_argument("--replicas", action="append", default=[], metavar="STAGE=N", help="run N copies of a stage")
    p.add_argument("--host", default="127.0.0.1", help="where the web page listens")
    p.add_argument("--port", type=int, default=8443)
    p.add_argument(
        "--db",
        default=None,
        help="an SQLite file or a postgresql:// address (default: RHD_WEB_DB, else web.sqlite in --workdir)",
    )
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("ps", help="the services of `rhd up`: state, restarts, lag and rate")
    p.add_argument("--workdir", default=UP_WORKDIR)
    p.set_defaults(func=cmd_ps)

    p = sub.add_parser("web", help="the web page for clinicians and operators (home region)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8443)
    p.add_argument("--tls", default=None, help="PEM with the key and certificate chain (HTTPS); without it, HTTP")
    p.add_argument("--workdir", default=UP_WORKDIR, help="its database's backups go here (SQLite: beside its file)")
    p.add_argument(
        "--db",
        default=None,
        help="an SQLite file or a postgresql:// address (default: RHD_WEB_DB, else web.sqlite in --workdir)",
    )
    p.add_argument("--services", default=None, help="`rhd up`'s services.json, for the operators' page")
    p.add_argument("--grafana-url", default="", help="linked from the operators' page")
    p.add_argument("--prometheus-url", default="", help="linked from the operators' page (its alerts)")
    p.set_defaults(func=cmd_web)

    p = sub.add_parser("users", help="the web page's users: add one (its password from RHD_NEW_USER_PASSWORD or asked)")
    p.add_argument("action", choices=["add"])
    p.add_argument("name")
    p.add_argument("--hospital", required=True)
    p.add_argument("--role", required=True, choices=["clinician", "operator", "researcher"])
    p.add_argument("--workdir", default=UP_WORKDIR)
    p.add_argument(
        "--db",
        default=None,
        help="an SQLite file or a postgresql:// address (default: RHD_WEB_DB, else web.sqlite in --workdir)",
    )
    p.set_defaults(func=cmd_users)

    args = parser.parse_args(argv)
    _logging(get_settings().log_level)
    from rhd.local.signals import stop_on_sigterm

    stop_on_sigterm()  # `rhd serve` replaces it with its graceful drain
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
