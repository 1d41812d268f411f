"""One partition's data path: the fetching side seals batches, the storing side maps, inserts and acks.

Imports everything in ``workers`` but ``worker``; nothing outside this package imports its sides.
"""
