"""Ed25519 key files (DESIGN §3): `<key_id>.pem` (PKCS#8, mode 0600) and `<key_id>.pub.json`.

The `.pub.json` has the shape of a trust-file key entry, so it can be pasted into a trust file.
Private keys are created with O_EXCL at mode 0600 (never visible wider) and never overwritten.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kristal.errors import KristalError, UsageInvalid
from kristal.formats.canonical import parse_json
from kristal.trust.roots import KEY_ID_PATTERN, ROLES, TrustedKey, b64url_encode
from kristal.trust.signing import SigningKey

PRIVATE_SUFFIX = ".pem"
PUBLIC_SUFFIX = ".pub.json"


def public_key_b64url(private_key: Ed25519PrivateKey) -> str:
    raw = private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return b64url_encode(raw)


def _check_key_id(key_id: str) -> str:
    if not isinstance(key_id, str) or not KEY_ID_PATTERN.fullmatch(key_id):
        raise UsageInvalid(
            f"key id {str(key_id)[:80]!r} must match {KEY_ID_PATTERN.pattern}", field="key_id"
        )
    return key_id


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise UsageInvalid(f"role {role!r} is not one of {', '.join(ROLES)}", field="role")
    return role


def _write_new(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: refuse to replace a key even if another process created it a moment ago.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise UsageInvalid(f"{path} already exists; refusing to overwrite a key") from None
    try:
        os.fchmod(fd, mode)  # the umask may only narrow it; make it exactly `mode`
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def generate_key(role: str, key_id: str, out_dir: Path) -> TrustedKey:
    """Create a fresh key pair for `role` in `out_dir`; returns its trust-file entry."""
    _check_role(role)
    _check_key_id(key_id)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pem_path = out_dir / f"{key_id}{PRIVATE_SUFFIX}"
    pub_path = out_dir / f"{key_id}{PUBLIC_SUFFIX}"
    for existing in (pem_path, pub_path):
        if existing.exists():
            raise UsageInvalid(f"{existing} already exists; refusing to overwrite a key")

    private_key = Ed25519PrivateKey.generate()
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    entry = TrustedKey.model_validate(
        {"key_id": key_id, "public_key": public_key_b64url(private_key), "roles": [role]})
    public = {"key_id": entry.key_id, "public_key": entry.public_key, "roles": list(entry.roles)}

    _write_new(pem_path, pem, 0o600)
    try:
        _write_new(pub_path, (json.dumps(public, indent=2) + "\n").encode("utf-8"), 0o644)
    except BaseException:
        # Half a key pair is worse than none: a rerun would refuse to overwrite the .pem.
        pem_path.unlink(missing_ok=True)
        raise
    return entry


def _read_public(path: Path) -> TrustedKey:
    try:
        raw = parse_json(path.read_bytes(), what=str(path))
        return TrustedKey.model_validate(raw)
    except (OSError, ValueError, KristalError) as exc:
        # pydantic's ValidationError is a ValueError.
        raise UsageInvalid(f"public key file {path} is unreadable or malformed: {exc}") from None


def load_signing_key(key_dir: Path, key_id: str) -> SigningKey:
    """Load `<key_id>.pem`; roles come from `<key_id>.pub.json`, which must match it if present."""
    _check_key_id(key_id)
    key_dir = Path(key_dir)
    pem_path = key_dir / f"{key_id}{PRIVATE_SUFFIX}"
    try:
        pem = pem_path.read_bytes()
    except OSError as exc:
        raise UsageInvalid(f"cannot read private key {pem_path}: {exc.strerror}") from None
    try:
        private_key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise UsageInvalid(f"{pem_path} is not an unencrypted PKCS#8 PEM key: {exc}") from None
    if not isinstance(private_key, Ed25519PrivateKey):
        raise UsageInvalid(f"{pem_path} is not an Ed25519 key")

    roles: tuple[str, ...] = ()
    pub_path = key_dir / f"{key_id}{PUBLIC_SUFFIX}"
    if pub_path.exists():
        public = _read_public(pub_path)
        if public.key_id != key_id or public.public_key != public_key_b64url(private_key):
            raise UsageInvalid(f"{pub_path} does not describe the key in {pem_path}")
        roles = tuple(public.roles)
    return SigningKey(key_id=key_id, private_key=private_key, roles=roles)


def load_role_key(key_dir: Path, role: str) -> SigningKey:
    """The key in `key_dir` whose `.pub.json` lists `role` (lowest key_id if several)."""
    _check_role(role)
    key_dir = Path(key_dir)
    if not key_dir.is_dir():
        raise UsageInvalid(f"key directory {key_dir} does not exist (set KRISTAL_KEY_DIR)")
    candidates = sorted(
        public.key_id
        for public in (_read_public(p) for p in key_dir.glob(f"*{PUBLIC_SUFFIX}"))
        if role in public.roles
    )
    if not candidates:
        raise UsageInvalid(
            f"no {role} key in {key_dir}: expected a <key_id>{PUBLIC_SUFFIX} listing role {role} "
            f"(create one with: kristalctl keys generate --role {role} --key-id ID --out {key_dir})"
        )
    return load_signing_key(key_dir, candidates[0])
