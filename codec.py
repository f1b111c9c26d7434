"""Protected history: with `NOTIFY_PAYLOAD_KEYS` set, every payload the client, the worker and the API send through
Temporal (a saga's input, its activities' inputs and results, its queries and updates, its result) is encrypted
with AES-256-GCM before it leaves the process, so that addresses, subjects and bodies never sit in clear in
Temporal's history. The first key encrypts; every key decrypts, by the key id each payload names, so that a key
rotated out of first place still opens the histories written with it. A payload that was never encrypted passes."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, PayloadCodec

from settings import PayloadKey

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
NONCE_BYTES = 12


class PayloadCipher(PayloadCodec):
    def __init__(self, keys: Sequence[PayloadKey]) -> None:
        if not keys:
            raise ValueError("a payload cipher needs at least one key")
        self._encrypting = keys[0]
        self._keys = {k.id: AESGCM(k.key) for k in keys}

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._encrypted(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._decrypted(p) for p in payloads]

    def _encrypted(self, payload: Payload) -> Payload:
        key_id = self._encrypting.id
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._keys[key_id].encrypt(nonce, payload.SerializeToString(), key_id.encode())
        return Payload(metadata={"encoding": ENCODING, KEY_ID: key_id.encode()}, data=nonce + sealed)

    def _decrypted(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        key_id = payload.metadata.get(KEY_ID, b"").decode()
        cipher = self._keys.get(key_id)
        if cipher is None:
            raise ValueError(f"a payload is encrypted with key {key_id!r}, which NOTIFY_PAYLOAD_KEYS does not hold")
        try:
            opened = cipher.decrypt(payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:], key_id.encode())
        except InvalidTag:
            raise ValueError(f"a payload does not open with key {key_id!r}: not the key it was sealed with") from None
        return Payload.FromString(opened)


def data_converter(keys: Sequence[PayloadKey]) -> DataConverter:
    """Pydantic's converter, encrypting with `keys` if there are any."""
    if not keys:
        return pydantic_data_converter
    return dataclasses.replace(pydantic_data_converter, payload_codec=PayloadCipher(keys))
