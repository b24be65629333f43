"""The benchmark suite behind ``lbalgo bench`` and ``benchmarks/run.py``.

One module per subject (``swrr``, ``wlc``, ``hashing``, ``operations``, ``ledger``), each with a
``run(quick: bool) -> list[Table]``. Every figure is a ratio measured side by side in one run
(ours against the naive algorithm, peer libraries, and an empty Python method call), because
absolute times on shared machines are noise. Peers that are not installed are skipped with a note.
"""
