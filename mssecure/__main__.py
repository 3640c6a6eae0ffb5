"""``python -m mssecure`` runs the operator CLI."""

from mssecure.cli import main

if __name__ == "__main__":  # not when a worker process imports the main module
    main()
