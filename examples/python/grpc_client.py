"""Baton's gRPC API from Python's grpcio, with a Baton API key in the
`authorization` metadata. Generates the stubs from proto/ first.

    BATON_GRPC=127.0.0.1:50051 BATON_API_KEY=bk_... python grpc_client.py

Starts a session, sends a message and prints the answer; then shows that a
call without the key is refused with UNAUTHENTICATED.
"""
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc

here = os.path.dirname(os.path.abspath(__file__))
proto_dir = os.environ.get("BATON_PROTO_DIR", os.path.join(here, "..", "..", "proto"))
out = tempfile.mkdtemp()
if protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}",
                "baton/v1/sessions.proto"]) != 0:
    sys.exit("protoc failed")
sys.path.insert(0, out)
from baton.v1 import sessions_pb2, sessions_pb2_grpc  # noqa: E402

key = os.environ["BATON_API_KEY"]
auth = [("authorization", f"Bearer {key}")]
channel = grpc.insecure_channel(os.environ.get("BATON_GRPC", "127.0.0.1:50051"))  # TLS off loopback
stub = sessions_pb2_grpc.SessionsStub(channel)

session = stub.StartSession(sessions_pb2.StartSessionRequest(), metadata=auth)
answer = ""
for event in stub.SendMessage(
    sessions_pb2.SendMessageRequest(session_id=session.session_id, content="hello from grpcio"),
    metadata=auth,
):
    if event.HasField("assistant_message"):
        answer = event.assistant_message.message.content
    if event.HasField("turn_completed"):
        break
print("answer:", answer)

try:
    stub.StartSession(sessions_pb2.StartSessionRequest())
except grpc.RpcError as e:
    print("no key refused:", e.code().name)
else:
    sys.exit("a call without a key was accepted")
