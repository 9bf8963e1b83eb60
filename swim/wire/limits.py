"""Size bounds enforced by every decoder; each one keeps a hostile peer from costing us memory."""

MAX_PACKET_BYTES = 65_536
"""Largest UDP datagram we accept (the UDP read buffer of memberlist)."""

MAX_STREAM_BYTES = 20 * 1024 * 1024
"""Largest stream payload we accept (memberlist's ``maxPushStateBytes``)."""

MAX_DECOMPRESSED_BYTES = 40 * 1024 * 1024
"""Largest output of one decompression in a stream (upstream memberlist's
``maxDecompressedBytes``)."""

MAX_PACKET_DECOMPRESSED_BYTES = MAX_PACKET_BYTES
"""Largest output of decompressing one datagram.  A sender compresses a packet it built to fit
its UDP buffer (at most a datagram), so anything larger is a bomb, refused after a few hundred
codes instead of tens of megabytes."""

MAX_PUSH_STATES = 1 << 20
"""Most member states one push-pull may announce (upstream memberlist's ``maxPushStateNodes``);
a node lowers it to the most members it holds."""

MAX_COMPOUND_PARTS = 255
"""A compound message counts its parts in one byte."""

MAX_COMPOUND_PART_BYTES = 65_535
"""A compound message gives each part's length in two bytes."""

MAX_NESTING = 4
"""How deep compound and compress wrappers may nest inside one packet."""

VSN_LEN = 6
"""``Vsn`` is always pmin, pmax, pcur, dmin, dmax, dcur."""

DEFAULT_META_MAX_BYTES = 512
"""memberlist's ``MetaMaxSize``; configurable in shoal."""

UDP_BUFFER_BYTES = 1400
"""The largest packet memberlist builds (``UDPBufferSize``)."""
