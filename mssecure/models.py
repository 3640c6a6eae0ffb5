"""Every table of mssecure, for migrations and schema checks (each model lives beside the package that owns it)."""

from mssecure.archive.models import ArchiveCheckpointRecord, ArchiveEventRecord, ArchiveHead
from mssecure.archive.store_models import ArchiveBody, ArchiveCopy
from mssecure.crypto.models import CertificateRecord, TrustedOperator
from mssecure.db import Base
from mssecure.directory.models import Entry, EntryChange
from mssecure.smtp.models import Delegation, Mailbox, QueuedMessage, QueuedRecipient, Tracking

__all__ = [
    "ArchiveBody",
    "ArchiveCheckpointRecord",
    "ArchiveCopy",
    "ArchiveEventRecord",
    "ArchiveHead",
    "Base",
    "CertificateRecord",
    "Delegation",
    "Entry",
    "EntryChange",
    "Mailbox",
    "QueuedMessage",
    "QueuedRecipient",
    "Tracking",
    "TrustedOperator",
]
