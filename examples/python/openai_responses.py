"""OpenAI's Responses API through Baton's front door, with the official
OpenAI Python SDK: a conversation continued with previous_response_id (its
state lives in Baton), function tools, streaming, a branch from an earlier
response, and store=False.

    BATON_HTTP=http://127.0.0.1:8080 BATON_MODEL=fake python openai_responses.py
    ... python openai_responses.py continue resp_...   # continue a response

Prints one JSON line per step.
"""
import json
import os
import sys

import openai

client = openai.OpenAI(
    base_url=os.environ.get("BATON_HTTP", "http://127.0.0.1:8080") + "/v1",
    api_key=os.environ.get("BATON_API_KEY", "unused"),
)
M = os.environ.get("BATON_MODEL", "fake")
TOOLS = [{
    "type": "function",
    "name": "lookup",
    "description": "Look a fact up.",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}},
                   "required": ["q"]},
}]


def out(**kv):
    print(json.dumps(kv), flush=True)


if len(sys.argv) > 2 and sys.argv[1] == "continue":
    r = client.responses.create(model=M, instructions="be brief", tools=TOOLS,
                                input="after restart", previous_response_id=sys.argv[2])
    out(step="continued", id=r.id, text=r.output_text, previous=r.previous_response_id)
    sys.exit(0)

r1 = client.responses.create(model=M, instructions="be brief", input="first question")
out(step="first", id=r1.id, text=r1.output_text, status=r1.status,
    tokens=r1.usage.total_tokens)

r2 = client.responses.create(model=M, instructions="be brief", input="second question",
                             previous_response_id=r1.id)
out(step="in_place", id=r2.id, text=r2.output_text)

r3 = client.responses.create(model=M, instructions="be brief", input="look it up",
                             tools=TOOLS, previous_response_id=r2.id)
call = [o for o in r3.output if o.type == "function_call"][0]
out(step="tool_call", id=r3.id, name=call.name, arguments=call.arguments,
    call_id=call.call_id)

r4 = client.responses.create(model=M, instructions="be brief", tools=TOOLS,
                             previous_response_id=r3.id,
                             input=[{"type": "function_call_output",
                                     "call_id": call.call_id, "output": "42"}])
out(step="tool_result", id=r4.id, text=r4.output_text)

deltas, types, final = [], [], None
stream = client.responses.create(model=M, instructions="be brief", tools=TOOLS,
                                 input="stream this", previous_response_id=r4.id,
                                 stream=True)
for ev in stream:
    types.append(ev.type)
    if ev.type == "response.output_text.delta":
        deltas.append(ev.delta)
    if ev.type == "response.completed":
        final = ev.response
out(step="stream", id=final.id, deltas=deltas, final=final.output_text,
    first=types[0], last=types[-1])

with client.responses.stream(model=M, instructions="be brief", tools=TOOLS,
                             input="helper stream",
                             previous_response_id=final.id) as s:
    fr = s.get_final_response()
out(step="helper", id=fr.id, text=fr.output_text)

rb = client.responses.create(model=M, instructions="be brief", input="branch question",
                             previous_response_id=r1.id)
out(step="branch", id=rb.id, text=rb.output_text)

rs = client.responses.create(model=M, input="forget me", store=False)
out(step="unstored", id=rs.id, text=rs.output_text, store=rs.store)
try:
    client.responses.create(model=M, input="again", previous_response_id=rs.id)
except openai.NotFoundError as e:
    out(step="unstored_gone", status=e.status_code, code=e.code)
else:
    sys.exit("a store=False response was continued")

try:
    client.responses.create(model=M, input=[{"type": "web_search_call"}])
except openai.BadRequestError as e:
    out(step="bad", status=e.status_code, param=e.param)
else:
    sys.exit("an unsupported item was accepted")
