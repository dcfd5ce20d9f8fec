"""Embeddings through Baton's front door with the official OpenAI Python SDK.

    BATON_HTTP=http://127.0.0.1:8080 BATON_MODEL=embed python openai_embeddings.py

The route (BATON_MODEL) must have endpoints with the `embeddings`
capability. Prints one JSON line per call: the SDK's default request (it
asks for base64 and decodes it), then floats with `dimensions`, then shows
that an empty input is refused with 400 naming the parameter.
"""
import json
import os

import openai

client = openai.OpenAI(
    base_url=os.environ.get("BATON_HTTP", "http://127.0.0.1:8080") + "/v1",
    api_key=os.environ.get("BATON_API_KEY", "unused"),
)
model = os.environ.get("BATON_MODEL", "embed")

r = client.embeddings.create(model=model, input=["hello world", "a b c"])
print(json.dumps({"default": [d.embedding for d in r.data], "model": r.model,
                  "tokens": r.usage.prompt_tokens}))

r = client.embeddings.create(model=model, input="one two three",
                             encoding_format="float", dimensions=3)
print(json.dumps({"float": [d.embedding for d in r.data]}))

try:
    client.embeddings.create(model=model, input=[])
except openai.BadRequestError as e:
    print(json.dumps({"refused": e.status_code, "param": e.body.get("param")}))
else:
    raise SystemExit("an empty input was accepted")
