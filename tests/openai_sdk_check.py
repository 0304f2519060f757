"""The OpenAI Python SDK against Tollgate behind a proxy (run by tests/tests/proxies.rs):
an allowed call succeeds, and each denial raises the exception OpenAI's users expect,
carrying Tollgate's error code and message.

Arguments: base URL, a key that may call the model, a key with RPM 1, the model."""

import sys

import openai

base_url, good, limited, model = sys.argv[1:5]
messages = [{"role": "user", "content": "hi"}]


def client(key):
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)


answer = client(good).chat.completions.create(model=model, messages=messages, max_tokens=5)
assert answer.choices[0].message.content == "hi", answer


def expect(error, key, model, code):
    try:
        client(key).chat.completions.create(model=model, messages=messages, max_tokens=5)
    except error as e:
        assert e.code == code, (e.code, e)
        assert e.message, e
        return
    raise AssertionError(f"{error.__name__} was not raised")


expect(openai.AuthenticationError, "sk-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGH", model, "invalid_api_key")
expect(openai.PermissionDeniedError, good, "not-in-the-catalog", "model_not_allowed")
client(limited).chat.completions.create(model=model, messages=messages, max_tokens=5)
expect(openai.RateLimitError, limited, model, "rate_limit_exceeded")
print("openai SDK: ok")
