"""The stream catalogue of SPEC §3: which event type each stream carries and how it is partitioned."""

from __future__ import annotations

from dataclasses import dataclass

from featureplane.pipelines.errors import TerminalError


@dataclass(frozen=True)
class StreamSpec:
    name: str
    event_type: str
    partition_key: str  # payload field whose value picks the partition


TRAFFIC = "fp.bus.traffic.fraud.v1"
ARRIVAL_EVENTS = "fp.bus.context.arrival_events.v1"
ARRIVAL_ENTITIES = "fp.bus.context.arrival_entities.v1"
FLOW_ANCHOR = "fp.bus.context.flow_anchor.fraud.v1"
LABELS = "fp.bus.labels.v1"

STREAMS: dict[str, StreamSpec] = {
    spec.name: spec
    for spec in (
        StreamSpec(TRAFFIC, "transaction_event", "flow_id"),
        StreamSpec(ARRIVAL_EVENTS, "arrival_event", "merchant_id"),
        StreamSpec(ARRIVAL_ENTITIES, "arrival_entities", "merchant_id"),
        StreamSpec(FLOW_ANCHOR, "flow_anchor", "flow_id"),
        StreamSpec(LABELS, "label_assertion", "flow_id"),
    )
}
STREAM_BY_EVENT_TYPE = {spec.event_type: spec for spec in STREAMS.values()}
CONTEXT_STREAMS = (ARRIVAL_EVENTS, ARRIVAL_ENTITIES, FLOW_ANCHOR)


def stream_spec(name: str) -> StreamSpec:
    spec = STREAMS.get(name)
    if spec is None:
        raise TerminalError("UNKNOWN_STREAM", f"unknown stream {name[:128]!r}; known: {sorted(STREAMS)}")
    return spec
