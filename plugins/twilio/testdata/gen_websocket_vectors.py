"""Generates twilio_websocket_vectors.json with Twilio's own SDK (twilio-python 9.13.0).

Twilio signs the WebSocket handshake of a Media Stream (`<Connect><Stream url="wss://…">`) like any
request: HMAC-SHA1 of the URL, here the `wss://` URL exactly as the TwiML names it (a GET upgrade
has no POST parameters). Run: python3 gen_websocket_vectors.py > twilio_websocket_vectors.json
"""
import json

import twilio
from twilio.request_validator import RequestValidator

TOKEN = "12345678901234567890123456789012"
SIGNED = "wss://voice.example.com/ws/twilio/media"
validator = RequestValidator(TOKEN)
signature = validator.compute_signature(SIGNED, {})
vectors = []
for name, url, valid in [
    ("the wss URL as the TwiML names it", SIGNED, True),
    ("the same URL with the wss default port as the SDK adds it (80)", "wss://voice.example.com:80/ws/twilio/media", True),
    ("the https spelling of the same URL: not what Twilio signed", "https://voice.example.com/ws/twilio/media", False),
    ("another path", "wss://voice.example.com/ws/twilio/other", False),
]:
    assert validator.validate(url, {}, signature) == valid, name
    vectors.append({"name": name, "url": url, "params": {}, "signature": signature, "valid": valid})
print(json.dumps({
    "generator": f"twilio-python {twilio.__version__} RequestValidator",
    "auth_token": TOKEN,
    "signed_url": SIGNED,
    "rule": "Twilio signs a Media Streams WebSocket handshake over the <Stream> url as written (wss://), with no parameters; see the README",
    "vectors": vectors,
}, indent=2))
