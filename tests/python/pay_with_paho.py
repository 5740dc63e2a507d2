#!/usr/bin/env python3
"""A paygate client nobody on the paygate team wrote: paho-mqtt for MQTT over mutual TLS,
pycose for COSE_Sign1, cryptography for keys. Built from docs/protocol.md alone.

Pays once, sends the same signed bytes again, then sends a request with duplicate JSON keys,
and prints one JSON line with what it saw. Exit code 0 when it ran to the end."""

import argparse
import json
import os
import queue
import ssl
import sys
import time

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import serialization
from pycose.algorithms import EdDSA
from pycose.headers import KID, Algorithm, ContentType
from pycose.keys import OKPKey
from pycose.keys.curves import Ed25519
from pycose.messages import Sign1Message

REQUEST_CT = "application/vnd.paygate.request.v1+json"
RECEIPT_CT = "application/vnd.paygate.receipt.v1+json"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--merchant", required=True)
    parser.add_argument("--amount-minor", type=int, required=True)
    args = parser.parse_args()
    bundle = args.bundle

    with open(os.path.join(bundle, "enrolment.json")) as f:
        device_id = json.load(f)["device_id"]
    with open(os.path.join(bundle, "signing.pk8"), "rb") as f:
        private = serialization.load_der_private_key(f.read(), password=None)
    seed = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    with open(os.path.join(bundle, "gateway-receipt.pub.json")) as f:
        gateway = json.load(f)
    import base64

    gateway_key = OKPKey(crv=Ed25519, x=base64.b64decode(gateway["public_key"]))

    replies: "queue.Queue[bytes]" = queue.Queue()
    subscribed = queue.Queue()
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=device_id, clean_session=False, protocol=mqtt.MQTTv311
    )
    client.tls_set(
        ca_certs=os.path.join(bundle, "ca.cert.pem"),
        certfile=os.path.join(bundle, "device.cert.pem"),
        keyfile=os.path.join(bundle, "device.key.pem"),
        tls_version=ssl.PROTOCOL_TLS_CLIENT,
    )
    reply_topic = f"paygate/v1/devices/{device_id}/replies"
    request_topic = f"paygate/v1/devices/{device_id}/requests"
    client.on_connect = lambda c, u, flags, rc, props: c.subscribe(reply_topic, qos=1)
    client.on_subscribe = lambda c, u, mid, codes, props: subscribed.put(codes)
    client.on_message = lambda c, u, msg: replies.put(msg.payload)
    client.connect("127.0.0.1", args.port, keepalive=30)
    client.loop_start()
    subscribed.get(timeout=10)

    def sign(payload: bytes) -> bytes:
        msg = Sign1Message(
            phdr={Algorithm: EdDSA, KID: device_id.encode(), ContentType: REQUEST_CT}, payload=payload
        )
        msg.key = OKPKey(crv=Ed25519, d=seed)
        return msg.encode()

    def receipt_for(envelope: bytes) -> dict:
        client.publish(request_topic, envelope, qos=1).wait_for_publish(timeout=10)
        raw = replies.get(timeout=15)
        try:
            msg = Sign1Message.decode(raw)
        except Exception:
            print("undecodable reply: " + raw[:40].hex(), file=sys.stderr)
            raise
        assert msg.phdr[ContentType] == RECEIPT_CT, msg.phdr
        assert msg.phdr[KID] == gateway["key_id"].encode()
        msg.key = gateway_key
        if not msg.verify_signature():
            raise SystemExit("receipt signature does not verify")
        return {"receipt": json.loads(msg.payload), "envelope_hex": raw.hex()}

    key = os.urandom(8).hex()
    request = {
        "v": 1,
        "device_id": device_id,
        "idempotency_key": key,
        "counter": int(time.time() * 1_000_000),
        "created_at_ms": int(time.time() * 1000),
        "op": {
            "type": "merchant_payment",
            "merchant_id": args.merchant,
            "amount": {"minor": args.amount_minor, "currency": "INR"},
        },
    }
    envelope = sign(json.dumps(request, separators=(",", ":")).encode())
    first = receipt_for(envelope)
    again = receipt_for(envelope)

    duplicate = json.dumps(request, separators=(",", ":")).replace(
        '"counter":', '"counter":1,"counter":', 1
    ).replace(f'"idempotency_key":"{key}"', '"idempotency_key":"dup-keys"', 1)
    refused = receipt_for(sign(duplicate.encode()))

    client.loop_stop()
    client.disconnect()
    print(
        json.dumps(
            {
                "first": first["receipt"],
                "same_bytes_on_retry": first["envelope_hex"] == again["envelope_hex"],
                "duplicate_keys": refused["receipt"],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
