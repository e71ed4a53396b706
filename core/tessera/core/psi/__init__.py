"""Private set intersection cardinality for ``overlap`` (DESIGN §8): ECDH over ristretto255.

Pure kernel: strings and bytes in, bytes out; no I/O, no transport. ``group`` binds libsodium's
ristretto255, ``parallel`` spreads scalar multiplications over processes, ``noise`` sizes and
draws the dummy elements that make the released counts differentially private, ``wire`` frames
the relayed lists, ``protocol`` is each party's and the counter's side of one pair.
"""
