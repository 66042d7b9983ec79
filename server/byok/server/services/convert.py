"""Domain objects ↔ byok.v1 messages. The only place that knows both."""

from __future__ import annotations

from google.protobuf import duration_pb2, timestamp_pb2

from byok.server.conversations.model import (
    Conversation,
    Message,
    MessageStatus,
    Role,
    SearchHit,
    Usage,
)
from byok.server.errors import InvalidArgument
from byok.v1 import common_pb2, conversations_pb2


def timestamp(us: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMicroseconds(us)
    return ts


def duration(us: int) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromMicroseconds(us)
    return d


def usage_pb(usage: Usage) -> common_pb2.TokenUsage:
    return common_pb2.TokenUsage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


def message_pb(m: Message) -> conversations_pb2.Message:
    generated = m.role is Role.ASSISTANT or m.usage.total_tokens or m.latency_us
    return conversations_pb2.Message(
        name=m.name,
        role=int(m.role),  # type: ignore[arg-type]
        content=m.content,
        status=int(m.status),  # type: ignore[arg-type]
        incomplete_reason=m.incomplete_reason,
        model=m.model,
        route=m.route,
        # Usage and timings describe a generation: left unset on other messages.
        usage=usage_pb(m.usage) if generated else None,
        latency=duration(m.latency_us) if generated else None,
        time_to_first_token=duration(m.ttft_us) if generated else None,
        finish_reason=m.finish_reason,
        metadata=m.metadata,
        create_time=timestamp(m.create_time_us),
        update_time=timestamp(m.update_time_us),
        etag=m.etag,
    )


def conversation_pb(c: Conversation) -> conversations_pb2.Conversation:
    return conversations_pb2.Conversation(
        name=c.name,
        title=c.title,
        metadata=c.metadata,
        space=f"spaces/{c.space_id}" if c.space_id else "",
        pinned=c.pinned,
        archived=c.archived,
        last_model=c.last_model,
        message_count=c.message_count,
        usage=usage_pb(c.usage),
        create_time=timestamp(c.create_time_us),
        update_time=timestamp(c.update_time_us),
        etag=c.etag,
        messages=[message_pb(m) for m in c.messages or []],
    )


def hit_pb(hit: SearchHit) -> conversations_pb2.SearchResult:
    return conversations_pb2.SearchResult(
        message=message_pb(hit.message),
        conversation=f"conversations/{hit.message.conversation_id}",
        conversation_title=hit.conversation_title,
        snippet=hit.snippet,
        score=hit.score,
    )


def message_from_pb(m: conversations_pb2.Message) -> Message:
    """A message a caller appends; output-only fields are ignored."""
    if m.role not in (r.value for r in Role):
        raise InvalidArgument.field(
            "message.role", "is required: one of ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT, ROLE_TOOL"
        )
    return Message(
        id="",
        conversation_id="",
        role=Role(m.role),
        content=m.content,
        status=MessageStatus.INCOMPLETE
        if m.status == conversations_pb2.MESSAGE_STATUS_INCOMPLETE
        else MessageStatus.COMPLETE,
        incomplete_reason=m.incomplete_reason,
        model=m.model,
        route=m.route,
        usage=Usage(m.usage.prompt_tokens, m.usage.completion_tokens),
        latency_us=m.latency.ToMicroseconds(),
        ttft_us=m.time_to_first_token.ToMicroseconds(),
        finish_reason=m.finish_reason,
        metadata=dict(m.metadata),
    )
