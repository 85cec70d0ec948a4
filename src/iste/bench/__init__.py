"""``iste bench``: throughput (output Mpx/s) and peak memory of the query engine, side by side
with each method's published code when a checkout is given, and the cost of ISTE's STF
key count in time and PSNR.

Modules: :mod:`~iste.bench.child` measures one configuration in a fresh process (so its peak
memory is its own); :mod:`~iste.bench.published` runs the published code inside such a
process; :mod:`~iste.bench.suite` plans the runs; :mod:`~iste.bench.keys` is the key-count
study; :mod:`~iste.bench.report` formats the tables.
"""
