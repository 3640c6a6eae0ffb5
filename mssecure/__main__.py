"""``python -m mssecure`` runs the operator CLI."""

from mssecure.cli import main

main()
