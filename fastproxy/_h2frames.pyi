"""The sending half of an HTTP/2 connection, from ext/h2frames.pyx (base of _h2.Connection)."""

class FrameWriter:
    peer_max_frame_size: int
    def data_to_send(self) -> bytes:
        """Take everything queued for the peer (b"" if nothing)."""
