"""Durable inbox and delivery state (see base.py); `journal_from_url` picks the backend from the URL."""

from receiver.journal.base import (
    FINAL_STATES,
    IN_PROGRESS_STATES,
    PENDING_STATES,
    ActionRecord,
    ActionState,
    AppendResult,
    Correlation,
    Decision,
    Delivery,
    DeliveryFilter,
    DeliveryState,
    DeliverySummary,
    Journal,
    JournalUnavailable,
    NewDelivery,
    ObjectState,
)
from receiver.journal.coordination import Leadership, while_leading
from receiver.journal.factory import journal_from_url

__all__ = [
    "FINAL_STATES",
    "IN_PROGRESS_STATES",
    "PENDING_STATES",
    "ActionRecord",
    "ActionState",
    "AppendResult",
    "Correlation",
    "Decision",
    "Delivery",
    "DeliveryFilter",
    "DeliveryState",
    "DeliverySummary",
    "Journal",
    "JournalUnavailable",
    "Leadership",
    "NewDelivery",
    "ObjectState",
    "journal_from_url",
    "while_leading",
]
