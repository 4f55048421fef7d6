"""A channel's own documents: its signed index, the pointer protocol, the immutable records
and the walk along their hash chain."""
