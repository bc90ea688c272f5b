"""The name policy, store keys and URLs.

A name is the object's name within its tenant; its store key is the tenant's
key prefix plus the name. Names are checked before anything is stored.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import quote

# S3's limit on a key, which is the tenant's key prefix plus the name: a
# tenant's names have 1024 bytes less its prefix
MAX_KEY_BYTES = 1024
MAX_NAME_BYTES = MAX_KEY_BYTES
# The policy below as a JSON Schema (ECMA-262) pattern, for the OpenAPI document:
# no control character (Cc) or U+FFFD; no leading '/', '//' or trailing '/';
# no '.' or '..' segment. (The length in bytes is beyond a pattern: the
# document says maxLength 1024 characters, and the bytes are checked here.)
NAME_PATTERN = (
    r"^(?![\s\S]*[\x00-\x1f\x7f-\x9f\ufffd])"
    r"(?!/)(?![\s\S]*//)(?![\s\S]*/$)(?!(?:[\s\S]*/)?\.\.?(?:/|$))[\s\S]+$"
)


def name_problem(name: str, key_prefix: str = "") -> str | None:
    """Why `name` is not acceptable in a tenant with this key prefix, or None
    when it is."""
    if not name:
        return "the name is empty"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "the name is not valid UTF-8"
    max_bytes = MAX_KEY_BYTES - len(key_prefix.encode())
    if len(encoded) > max_bytes:
        # a longer one would be accepted here and refused by the store (KeyTooLong)
        return (
            f"the name is longer than {max_bytes} bytes in UTF-8 (a store key, "
            f"{key_prefix!r} + the name, has at most {MAX_KEY_BYTES})"
        )
    if "\ufffd" in name:
        # what invalid UTF-8 in the percent-encoded query decodes to: two
        # different names sent by a client would collide as one
        return "the name is not valid UTF-8 (or contains U+FFFD)"
    if any(unicodedata.category(char) == "Cc" for char in name):
        return "the name contains control characters"
    if name.startswith("/"):
        return "the name starts with '/'"
    if "//" in name:
        return "the name contains '//'"
    if name.endswith("/"):
        return "the name ends with '/'"
    if any(segment in (".", "..") for segment in name.split("/")):
        return "the name contains a '.' or '..' segment"
    return None


def store_key(key_prefix: str, name: str) -> str:
    return f"{key_prefix}{name}"


def object_url(public_base_url: str, key: str) -> str:
    """Every byte percent-encoded except A-Z a-z 0-9 - . _ ~ /."""
    return f"{public_base_url.rstrip('/')}/{quote(key, safe='/')}"
