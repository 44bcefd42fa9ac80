"""`rhd up` supervises its broker too: a broker that dies is started again after the backoff, on the same address.
Apache Kafka (what `rhd up` runs where Java and the jars are) comes back with every record it held; Tansu keeps its
records in memory and comes back empty, with its topics made again."""

import asyncio
import os
import signal

import pytest
from rhd.local.up import FIRST_BACKOFF_S, Supervisor
from rhd.runtime import kafka
from rhd.runtime.settings import Settings
from rhd.runtime.topics import STUDIES_DIAGNOSED

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


async def test_a_broker_that_dies_is_started_again(tmp_path, broker_kind, monkeypatch):
    monkeypatch.setenv("RHD_BROKER", broker_kind)
    supervisor = Supervisor(tmp_path, Settings(blob_dir=tmp_path / "blobs", secrets_dir=tmp_path / "keys"))
    broker = supervisor.stack.broker
    assert broker.kind == broker_kind
    (tmp_path / "logs").mkdir()
    await broker.start(supervisor.stack.base.partitions)
    try:
        settings, address = broker.admin_settings(), broker.bootstrap_servers
        producer = kafka.producer(settings, "restart-test")
        await producer.start()
        try:
            await producer.send_and_wait(STUDIES_DIAGNOSED, b"kept?", key=b"P1")
        finally:
            await producer.stop()

        assert broker.process is not None
        os.killpg(broker.process.pid, signal.SIGKILL)  # as the kernel's OOM killer would
        broker.process.wait()
        assert not await supervisor.check_broker(now=0.0)  # the exit noted, a restart due after the backoff
        assert supervisor.write_state() is None and "backoff" in supervisor.state_path.read_text()
        assert not await supervisor.check_broker(now=FIRST_BACKOFF_S / 2)
        assert await supervisor.check_broker(now=FIRST_BACKOFF_S)
        assert supervisor.broker.restarts == 1 and supervisor.broker.last_exit == -signal.SIGKILL
        assert broker.bootstrap_servers == address and broker.process.poll() is None

        records = await asyncio.wait_for(kafka.read_records(settings, STUDIES_DIAGNOSED, 0, "restart-test"), 60)
        assert [r.value for r in records] == ([b"kept?"] if broker_kind == "kafka" else [])
        assert not await supervisor.check_broker()  # running: nothing to do
    finally:
        broker.stop()
