"""HPACK header compression (RFC 7541), compiled from ext/hpack.pyx.

* Header lists are lists of (name, value) bytes tuples; names are not changed (HTTP/2
  requires lowercase; the checks are fastproxy._h2msg's).
* Decoder: keeps the peer encoder's dynamic table.  `decode(block, max_list_size)` returns
  None when the list is larger than max_list_size (RFC 9113 6.5.2 counting: name + value
  + 32 per field), after decoding the whole block so the table stays in step: an HPACK
  bomb costs no memory.  Table size updates above SETTINGS_HEADER_TABLE_SIZE, or after a
  field, integers over 2^31-1, strings past the block, bad Huffman codes/padding
  (RFC 7541 5.2) raise HPACKError (a COMPRESSION_ERROR for the connection).
* Encoder: indexes what fits in a quarter of the table; `authorization`,
  `proxy-authorization` and cookies under 20 bytes go as never-indexed literals
  (RFC 7541 7.1.3); strings are Huffman-coded when that is shorter.  A table size
  change is announced at the start of the next block (smallest size first, 4.2).
* The Huffman decoder is a 4-bits-at-a-time state table built at import from the code
  lengths of Appendix B (the code is canonical).

Compiled callers cimport Decoder.decode_c / Encoder.encode_c (ext/fastproxy/_hpack.pxd).
"""
from collections.abc import Iterable
from typing import Final, TypeAlias

DEFAULT_TABLE_SIZE: Final[int]
STATIC_TABLE: Final[tuple[tuple[bytes, bytes], ...]]
HUFFMAN_LENGTHS: Final[tuple[int, ...]]

Header: TypeAlias = tuple[bytes, bytes]

class HPACKError(ValueError): ...

def huffman_encode(data: bytes) -> bytes: ...
def huffman_decode(data: bytes) -> bytes: ...

class _Table:
    size: int
    max_size: int
    def entries(self) -> list[Header]: ...
    def __len__(self) -> int: ...

class Decoder(_Table):
    settings_max_size: int
    def __init__(self, max_table_size: int = 4096) -> None: ...
    @property
    def table_size(self) -> int: ...
    def set_settings_max_size(self, size: int) -> None: ...
    def decode(self, data: bytes | bytearray | memoryview, max_list_size: int = -1) -> list[Header] | None: ...

class Encoder(_Table):
    huffman_min: int
    def __init__(self, max_table_size: int = 4096, huffman_min: int = 1) -> None: ...
    def set_table_size(self, size: int) -> None: ...
    def encode(self, headers: Iterable[Header]) -> bytes: ...
