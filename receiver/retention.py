"""Prunes finished journal entries older than `retention.max_age_days`, periodically."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import structlog

from receiver.config import RetentionConfig
from receiver.journal import Journal, JournalUnavailable

log = structlog.get_logger(__name__)


async def prune_forever(journal: Journal, retention: RetentionConfig) -> None:
    """Until cancelled; a journal that is briefly unavailable is tried again at the next interval."""
    while True:
        cutoff = datetime.now(UTC) - timedelta(days=retention.max_age_days)
        try:
            pruned = await journal.prune(cutoff)
        except JournalUnavailable as error:
            log.warning("retention.journal_unavailable", error=str(error))
        else:
            if pruned:
                log.info("retention.pruned", deliveries=pruned, older_than=cutoff.isoformat())
        await asyncio.sleep(retention.interval_seconds)
