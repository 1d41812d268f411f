"""One partition's data path: the fetching side seals batches, the storing side maps, inserts and acks.

``runner.PartitionRunner`` owns both sides (``fetcher.Fetcher``, ``storer.Storer``), which meet
in ``handoff.Handoff``; ``writer.TableWriter`` is the storer's map-and-insert step, ``retry``
its retry loop.  Imports everything in ``workers`` but ``worker``; nothing outside this package
imports its sides.
"""
