"""The benchmark suite behind ``make bench``: our verbs against raw Fabric, parallel-ssh and OpenSSH.

Run it as ``python bench/run.py`` (``--quick`` for a small smoke run). It
builds its own throwaway fleet on 127.0.0.1 with the test suite's `Testbed`,
measures, prints a table and writes ``bench/results.json``.
"""
