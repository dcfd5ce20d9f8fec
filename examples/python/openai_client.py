"""Baton's OpenAI-compatible front door from the official OpenAI Python SDK,
with a Baton API key as the SDK's api_key (sent as `authorization: Bearer`).

    BATON_HTTP=http://127.0.0.1:8080 BATON_API_KEY=bk_... python openai_client.py

Prints the answer; then shows that a wrong key is refused with 401.
"""
import os
import sys

import openai

base_url = os.environ.get("BATON_HTTP", "http://127.0.0.1:8080") + "/v1"
key = os.environ["BATON_API_KEY"]

client = openai.OpenAI(base_url=base_url, api_key=key)
reply = client.chat.completions.create(
    model=os.environ.get("BATON_MODEL", "echo"),
    messages=[{"role": "user", "content": "hello from the OpenAI SDK"}],
)
print("answer:", reply.choices[0].message.content)

try:
    openai.OpenAI(base_url=base_url, api_key="bk_00000000_" + "0" * 64).models.list()
except openai.AuthenticationError as e:
    print("wrong key refused:", e.status_code)
else:
    sys.exit("a wrong key was accepted")
