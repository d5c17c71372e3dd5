"""Wire protocol between the on-robot runtime and arm servers: msgpack messages, ZMQ sockets, CURVE auth.

    messages   message dataclasses, encode/decode with full validation (ProtocolError(reason))
    transport  ServerTransport / ClientTransport over three ZMQ channels; loopback-only without keys
    keys       CURVE key files: keys_generate, load_server_keys, load_client_keys
    auth       ZAP allow-list authenticator (refusals are logged and counted)

docs/protocol.md is the language-neutral reference.
"""

from hardware.protocol.keys import (CurveClientKeys, allow_client, CurveServerKeys, KeyFileError, Keypair, generate_keys,
                                    keys_generate, load_allowlist, load_client_keys, load_keypair,
                                    load_server_keys)
from hardware.protocol.messages import (MESSAGE_TYPES, PROTOCOL_VERSION, REASONS, CameraFrame, CartesianTarget,
                                        Describe, Description, EStop, Header, Heartbeat, JointTarget, Message, ModeReply, ModeRequest,
                                        ProtocolError, Reset, RobotState, Status, decode, encode)
from hardware.protocol.transport import (ClientTransport, ControlRequest, ControlTimeout, Endpoints,
                                         InsecureEndpointError, Received, ServerTransport, clock_offset_ns,
                                         is_loopback_endpoint, parse_bind)

__all__ = [
    "CameraFrame", "CartesianTarget", "ClientTransport", "ControlRequest", "ControlTimeout", "CurveClientKeys",
    "CurveServerKeys", "Describe", "Description", "EStop", "Endpoints", "Header", "Heartbeat", "InsecureEndpointError", "JointTarget",
    "KeyFileError", "Keypair", "MESSAGE_TYPES", "Message", "ModeReply", "ModeRequest", "PROTOCOL_VERSION",
    "ProtocolError", "REASONS", "parse_bind", "Received", "Reset", "RobotState", "ServerTransport", "Status",
    "allow_client", "clock_offset_ns", "decode", "encode", "generate_keys", "is_loopback_endpoint", "keys_generate",
    "load_allowlist", "load_client_keys", "load_keypair", "load_server_keys",
]
