"""Publishing: a triples file in, a signed release in the bucket and the channel index."""
