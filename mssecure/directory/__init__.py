"""The directory of certified addresses of the trust space: entries, identifiers, import and export."""

from mssecure.directory.formats import Format, Record, read_records, write_entries
from mssecure.directory.importer import ImportReport, Rejection, import_records
from mssecure.directory.models import Entry, EntryChange
from mssecure.directory.records import EntryData, Kind, Status, fold
from mssecure.directory.service import Directory

__all__ = [
    "Directory",
    "Entry",
    "EntryChange",
    "EntryData",
    "Format",
    "ImportReport",
    "Kind",
    "Record",
    "Rejection",
    "Status",
    "fold",
    "import_records",
    "read_records",
    "write_entries",
]
