"""The re-link map of the home region, read back: studies.links.v1's sealed links, opened with the link keyring.

A record's latest value wins; a tombstone (the same key, no value: an erasure) removes the study's link, whether or
not the broker has compacted the link away yet. Links that do not open (a retired key, a foreign record) are skipped.
Every reader of the map (deid's census, the privacy report, `rhd results` and `rhd erase`, watch) goes through
`apply_link`, so an erased study is erased for all of them.
"""

import json
import logging
from collections.abc import Iterable, MutableMapping

from google.protobuf.message import DecodeError

from rhd.runtime.kafka import read_records
from rhd.runtime.secrets import SEALED_SCHEMA, Keyring, SecretError
from rhd.runtime.settings import Settings
from rhd.runtime.topics import STUDIES_LINKS
from rhd.v1 import rhd_pb2 as pb

log = logging.getLogger(__name__)

LINK_KIND = "link"

Link = dict  # the opened link: pseudonym, hospital_id, study_id, accession_number, patient, videos, ...


def open_link(value: bytes | None, links: Keyring) -> Link | None:
    """The link a record of studies.links.v1 carries, or None for a tombstone; SecretError when it does not open."""
    if value is None:
        return None
    record = pb.SealedRecord.FromString(value)
    if record.schema != SEALED_SCHEMA or record.kind != LINK_KIND:
        raise SecretError("not a sealed link (a SealedRecord of kind link is expected)")
    return dict(json.loads(links.open(record.envelope)))


def apply_link(link_map: MutableMapping[str, Link], key: bytes | None, value: bytes | None, links: Keyring) -> str:
    """One record applied to the map (pseudonym -> link): a link sets its key, a tombstone removes it. Returns the
    record's pseudonym. A link sealed for another pseudonym than its key is refused (SecretError): the envelope is
    not bound to the key, so a copy under another key must not re-link a study."""
    pseudonym = (key or b"").decode(errors="replace")
    link = open_link(value, links)
    if link is None:
        link_map.pop(pseudonym, None)
    elif link.get("pseudonym") != pseudonym:
        raise SecretError("a link whose record key is not its pseudonym")
    else:
        link_map[pseudonym] = link
    return pseudonym


def link_map(records: Iterable[tuple[bytes | None, bytes | None]], links: Keyring) -> dict[str, Link]:
    """Study pseudonym (the record key) -> its opened link, rebuilt from (key, value) records in topic order (per
    partition; a key stays on one). Records that do not open are skipped, and counted in the log."""
    out: dict[str, Link] = {}
    skipped = 0
    for key, value in records:
        try:
            apply_link(out, key, value, links)
        except (SecretError, ValueError, DecodeError):
            skipped += 1
    if skipped:
        log.warning("%d records of the link map did not open: their studies are not re-linked", skipped)
    return out


async def read_link_map(settings: Settings, keyring: Keyring, client_id: str) -> dict[str, Link]:
    """The map as the broker holds it now, read from the beginning."""
    records = await read_records(settings, STUDIES_LINKS, 0, client_id)
    return link_map(((r.key, r.value) for r in records), keyring)
