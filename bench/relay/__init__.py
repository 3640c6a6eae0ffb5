"""Helpers of ``bench/bench_relay.py`` (issue 7): the messages, the load generator and Maildir watcher, the process
statistics, the Postfix baseline and the crypto ceiling. Benchmark code only: nothing in ``mssecure`` imports it."""

__all__: list[str] = []
