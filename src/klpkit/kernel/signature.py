"""The signature ``sign-file`` appends to a kernel module.

Layout (include/linux/module_signature.h): the PKCS#7 blob, then a 12-byte
``struct module_signature`` (algo, hash, id_type, signer_len, key_id_len,
3 pad bytes, big-endian u32 sig_len), then the marker
``~Module signature appended~\\n``.  The module loader strips it before it
parses the ELF, so klpkit does the same; any change to the ELF invalidates it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MARKER = b"~Module signature appended~\n"
_INFO = struct.Struct(">BBBBB3xI")
ID_TYPES = {0: "PGP", 1: "X.509", 2: "PKCS#7"}


@dataclass(frozen=True)
class ModuleSignature:
    id_type: str
    signature_length: int
    total_length: int  # bytes the signature adds to the file, marker included

    @classmethod
    def from_trailer(cls, trailer: bytes) -> ModuleSignature | None:
        """Parse the bytes after the ELF image; None when they hold no valid signature."""
        if not trailer.endswith(MARKER) or len(trailer) < len(MARKER) + _INFO.size:
            return None
        info_at = len(trailer) - len(MARKER) - _INFO.size
        _algo, _hash, id_type, signer_len, key_id_len, sig_len = _INFO.unpack_from(trailer, info_at)
        if sig_len + signer_len + key_id_len > info_at:
            return None
        return cls(
            ID_TYPES.get(id_type, f"type {id_type}"),
            sig_len,
            sig_len + signer_len + key_id_len + _INFO.size + len(MARKER),
        )
