#!/usr/bin/env python3
"""An audit-archive verifier nobody on the paygate team wrote into paygate: Python's hashlib
for SHA-256 and RFC 9162 Merkle hashing, pycose for COSE_Sign1. Built from
docs/audit-format.md alone, to show the format can be checked without paygate's code.

Prints one JSON line: {"ok": true, "segments": S, "records": R, "log_root": "..."} or
{"ok": false, "kind": "...", "location": "...", "message": "..."}. Exit code 0 either way
when it ran to the end."""

import argparse
import base64
import hashlib
import json
import os
import sys

from pycose.algorithms import EdDSA
from pycose.headers import KID, Algorithm, ContentType
from pycose.keys import OKPKey
from pycose.keys.curves import Ed25519
from pycose.messages import Sign1Message

CHECKPOINT_CT = "application/vnd.paygate.audit-checkpoint.v1+json"
ZERO = "0" * 64
RECORD_FIELDS = {"v", "seq", "prev", "time", "outbox_id", "event", "actor", "origin", "outcome",
                 "component", "resource", "code", "tx_id", "device_id", "wallet_id",
                 "merchant_id", "amount", "detail"}
CHECKPOINT_FIELDS = {"v", "log_id", "segment", "first_seq", "record_count", "segment_sha256",
                     "segment_root", "last_record_hash", "log_size", "log_root",
                     "prev_checkpoint_sha256", "outbox_id_max", "sealed_at"}


class Break(Exception):
    def __init__(self, kind, location, message):
        super().__init__(message)
        self.kind, self.location, self.message = kind, location, message


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def mth(leaves):
    """RFC 9162 section 2.1.1 Merkle Tree Hash."""
    n = len(leaves)
    if n == 0:
        return sha256(b"")
    if n == 1:
        return sha256(b"\x00" + leaves[0])
    k = 1
    while k * 2 < n:
        k *= 2
    return sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:]))


def strict_json(data: bytes, allowed, where):
    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise Break("RECORD_MALFORMED", where, "duplicate keys")
        return dict(pairs)
    value = json.loads(data, object_pairs_hook=no_duplicates)
    unknown = set(value) - allowed
    if unknown:
        raise Break("RECORD_MALFORMED", where, f"unknown fields {sorted(unknown)}")
    return value


def numbers(directory, suffix):
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return set()
    return {int(n[: -len(suffix)]) for n in names if n.endswith(suffix) and n[: -len(suffix)].isdigit()}


def verify(archive, key, kid):
    seq, prev, prev_cp, log_leaves, log_id = 0, ZERO, ZERO, [], None
    cps = numbers(os.path.join(archive, "checkpoints"), ".cose")
    segs = numbers(os.path.join(archive, "segments"), ".jsonl")
    expected = 0
    for k in sorted(cps):
        seg_name = f"segments/{k:012d}.jsonl"
        cp_name = f"checkpoints/{k:012d}.cose"
        if k != expected:
            raise Break("SEGMENT_MISSING", f"segments/{expected:012d}.jsonl", "gap in segment numbers")
        with open(os.path.join(archive, cp_name), "rb") as f:
            cp_bytes = f.read()
        msg = Sign1Message.decode(cp_bytes)
        if msg.phdr.get(KID) != kid.encode():
            raise Break("CHECKPOINT_SIGNATURE", cp_name, "another key id")
        if msg.phdr.get(Algorithm) is not EdDSA and msg.phdr.get(Algorithm) != EdDSA:
            raise Break("CHECKPOINT_SIGNATURE", cp_name, "not EdDSA")
        if msg.phdr.get(ContentType) != CHECKPOINT_CT:
            raise Break("CHECKPOINT_SIGNATURE", cp_name, "wrong content type")
        msg.key = key
        try:
            good = msg.verify_signature()
        except Exception:  # pycose raises on malformed signatures
            good = False
        if not good:
            raise Break("CHECKPOINT_SIGNATURE", cp_name, "signature does not verify")
        body = strict_json(msg.payload, CHECKPOINT_FIELDS, cp_name)
        mismatch = lambda m: Break("CHECKPOINT_MISMATCH", cp_name, m)  # noqa: E731
        if body["v"] != 1 or body["segment"] != k:
            raise mismatch("version or segment number")
        if log_id is not None and body["log_id"] != log_id:
            raise mismatch("log id changed")
        if body["prev_checkpoint_sha256"] != prev_cp:
            raise mismatch("previous checkpoint hash")
        try:
            with open(os.path.join(archive, seg_name), "rb") as f:
                seg_bytes = f.read()
        except FileNotFoundError:
            raise Break("SEGMENT_MISSING", seg_name, "segment file missing")
        lines, rest, number, first_seq = [], seg_bytes, 0, seq
        while rest:
            number += 1
            where = f"{seg_name} line {number}"
            end = rest.find(b"\n")
            if end < 0:
                raise Break("TRUNCATED", where, "no newline")
            line, rest = rest[:end], rest[end + 1:]
            try:
                record = strict_json(line, RECORD_FIELDS, where)
            except ValueError as e:
                raise Break("RECORD_MALFORMED", where, str(e))
            if record.get("seq") != seq:
                raise Break("SEQUENCE_GAP", where, f"seq {record.get('seq')} where {seq} expected")
            if record.get("prev") != prev:
                raise Break("CHAIN_BROKEN", where, "prev is not the previous line's hash")
            lines.append(line)
            prev = sha256(line).hex()
            seq += 1
        if len(lines) < body["record_count"]:
            raise Break("TRUNCATED", seg_name, "fewer records than the checkpoint")
        if len(lines) != body["record_count"] or body["first_seq"] != first_seq:
            raise mismatch("record count or first seq")
        root = mth(lines)
        if body["segment_root"] != root.hex() or body["last_record_hash"] != prev:
            raise mismatch("segment root or last record hash")
        if body["segment_sha256"] != sha256(seg_bytes).hex():
            raise mismatch("segment file hash")
        log_leaves.append(root)
        if body["log_size"] != len(log_leaves) or body["log_root"] != mth(log_leaves).hex():
            raise mismatch("log tree")
        log_id = body["log_id"]
        prev_cp = sha256(cp_bytes).hex()
        expected += 1
    for k in sorted(segs - cps):
        raise Break("SEGMENT_MISSING", f"checkpoints/{k:012d}.cose", "segment without checkpoint")
    return {"ok": True, "segments": len(log_leaves), "records": seq, "log_root": mth(log_leaves).hex()}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--archive", required=True)
    parser.add_argument("--public-key", required=True)
    args = parser.parse_args()
    with open(args.public_key) as f:
        jwk = json.load(f)
    assert jwk["kty"] == "OKP" and jwk["crv"] == "Ed25519"
    x = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
    key = OKPKey(crv=Ed25519, x=x)
    try:
        result = verify(args.archive, key, jwk["kid"])
    except Break as b:
        result = {"ok": False, "kind": b.kind, "location": b.location, "message": b.message}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
