"""TFRecord framing: a record's frame with both masked CRC32Cs, and the records of a file's bytes.

Plain bytes in and out, no Beam and no file system, so that a fetch worker process can frame the
records it makes without importing Beam; :mod:`storage.files` reads and writes the files.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

try:
    import google_crc32c

    def _crc32c(data: bytes) -> int:
        return google_crc32c.value(data)

except ImportError:  # pragma: no cover - google-crc32c ships with google-cloud-storage
    from apache_beam.io.tfrecordio import _default_crc32c_fn as _crc32c


def _masked_crc(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord_frame(record: bytes) -> bytes:
    """One record in TFRecord framing (length, masked CRC32C of length, data, masked CRC)."""
    length = struct.pack("<Q", len(record))
    return (
        length
        + struct.pack("<I", _masked_crc(length))
        + record
        + struct.pack("<I", _masked_crc(record))
    )


def read_tfrecords(data: bytes) -> Iterator[bytes]:
    """The records of a TFRecord file's bytes, checking both CRCs."""
    offset = 0
    while offset < len(data):
        header = data[offset : offset + 12]
        if len(header) < 12:
            raise ValueError(f"truncated TFRecord header at byte {offset}")
        (length,) = struct.unpack("<Q", header[:8])
        (length_crc,) = struct.unpack("<I", header[8:12])
        if _masked_crc(header[:8]) != length_crc:
            raise ValueError(f"corrupt TFRecord length CRC at byte {offset}")
        start = offset + 12
        record = data[start : start + length]
        footer = data[start + length : start + length + 4]
        if len(record) != length or len(footer) != 4:
            raise ValueError(f"truncated TFRecord at byte {offset}")
        if _masked_crc(record) != struct.unpack("<I", footer)[0]:
            raise ValueError(f"corrupt TFRecord data CRC at byte {offset}")
        yield record
        offset = start + length + 4
