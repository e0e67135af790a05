"""Optional payload authentication (distributed.secret_file): an HMAC-SHA256 tag over a
payload's header (which holds the round, the sender and the shape) and its bytes, under a
secret every peer reads from the same file. A payload whose tag does not verify is left out.

What it protects and what it does not is stated in the README ("Trust"): it proves that whoever
sent a payload knows the secret and that nothing changed it on the way; it encrypts nothing,
and a peer that knows the secret can still send anything (robust_mixing's norm bound is for
that).
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import torch
import torch.distributed as dist

TAG_BYTES = 32  # HMAC-SHA256
DOMAIN = b"tadlora-payload-v1"  # separates these tags from any other use of the secret


def read_secret(path: str | Path) -> bytes:
    """The shared secret in `path` (surrounding whitespace stripped); a missing, unreadable or
    empty file is a ValueError that names it."""
    p = Path(path)
    try:
        secret = p.read_bytes().strip()
    except FileNotFoundError:
        raise ValueError(f"the secret file {p} does not exist") from None
    except OSError as e:
        raise ValueError(f"the secret file {p} cannot be read: {e.strerror or e}") from None
    if not secret:
        raise ValueError(f"the secret file {p} is empty: write a shared secret into it (e.g. "
                         f"`python -c 'import secrets; print(secrets.token_hex(32))' > {p}`)")
    return secret


def secret(path: str) -> bytes | None:
    """The secret of distributed.secret_file, or None when it is "" (authentication off)."""
    return read_secret(path) if path else None


def _bytes(t: torch.Tensor) -> bytes:
    flat = t.detach().contiguous().reshape(-1).cpu()
    return flat.view(torch.uint8).numpy().tobytes()


def tag(key: bytes, header: torch.Tensor, payload: torch.Tensor) -> torch.Tensor:
    """The tag of one payload as a (TAG_BYTES,) uint8 tensor, on the payload's device."""
    mac = hmac.new(key, DOMAIN + _bytes(header) + _bytes(payload), hashlib.sha256).digest()
    return torch.frombuffer(bytearray(mac), dtype=torch.uint8).to(payload.device)


def verify(key: bytes, header: torch.Tensor, payload: torch.Tensor, got: torch.Tensor) -> bool:
    """Whether `got` is the tag of (header, payload) under `key` (constant-time compare)."""
    return hmac.compare_digest(_bytes(tag(key, header, payload)), _bytes(got))


UNAUTHENTIC = "failed authentication: no tag, or not the tag of the shared secret"


def unverified(key: bytes | None, header: torch.Tensor, tagged: int, payload: torch.Tensor,
               got: torch.Tensor | None) -> str | None:
    """Why a received payload fails authentication under `key`, or None (no key: accepted)."""
    if key is None or (tagged and got is not None and verify(key, header, payload, got)):
        return None
    return UNAUTHENTIC


def gather_tags(key: bytes | None, tagged: list[int], header: torch.Tensor,
                flat: torch.Tensor) -> list[torch.Tensor | None]:
    """All_gather of every rank's tag of (header, flat) when any rank tags (a rank without a
    key sends zeros, which fail verification); Nones when no rank tags."""
    if not any(tagged):
        return [None] * len(tagged)
    mine = (tag(key, header, flat) if key is not None
            else torch.zeros(TAG_BYTES, dtype=torch.uint8, device=flat.device))
    tags = [torch.empty_like(mine) for _ in tagged]
    dist.all_gather(tags, mine)
    return tags
