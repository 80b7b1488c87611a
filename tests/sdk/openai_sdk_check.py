"""Drives a running `tenantry serve` with the official `openai` Python SDK, unmodified: the
tenant's JWT is the API key and `base_url` is serve's `/v1`. Run by tests/openai_sdk.rs, which
starts serve with a scripted upstream (it answers `ANSWER[<model>]: <user message>`).

Environment: TENANTRY_BASE_URL, TENANTRY_TOKEN (tenant acme), TENANTRY_OTHER_TOKEN (tenant
globex), TENANTRY_LIMITED_TOKEN (tenant initech, 3 requests per minute).
Exits non-zero with a message on the first failed check; prints "ok" when all pass.
"""
import asyncio
import base64
import os
import struct

import openai
from openai import AsyncOpenAI, OpenAI

MODEL = "gpt-4o-mini"
EMBEDDING_MODEL = "all-MiniLM-L6-v2"
BASE_URL = os.environ["TENANTRY_BASE_URL"]


def client(token):
    # No SDK retries: every request below is meant to be seen exactly once.
    return OpenAI(base_url=BASE_URL, api_key=token, max_retries=0, timeout=30)


def user(text):
    return [{"role": "user", "content": text}]


def expect(exc_type, fn):
    try:
        fn()
    except exc_type as e:
        return e
    raise AssertionError(f"expected {exc_type.__name__}")


def main():
    acme = client(os.environ["TENANTRY_TOKEN"])
    globex = client(os.environ["TENANTRY_OTHER_TOKEN"])

    # Non-streaming.
    r = acme.chat.completions.create(model=MODEL, messages=user("Hello [[usage:11:5]]"))
    assert r.object == "chat.completion", r
    assert r.id.startswith("chatcmpl-"), r.id
    assert r.model == MODEL, r.model
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == f"ANSWER[{MODEL}]: Hello [[usage:11:5]]", r
    assert r.choices[0].finish_reason == "stop"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (11, 5, 16)

    # Raw response: the cache header, then a hit for the same question.
    raw = acme.chat.completions.with_raw_response.create(
        model=MODEL, messages=user("Cache me [[usage:4:4]]")
    )
    assert raw.headers.get("x-cache") == "miss", raw.headers
    first = raw.parse()
    raw = acme.chat.completions.with_raw_response.create(
        model=MODEL, messages=user("Cache me [[usage:4:4]]")
    )
    assert raw.headers.get("x-cache") == "hit", raw.headers
    hit = raw.parse()
    assert hit.choices[0].message.content == first.choices[0].message.content
    assert hit.usage.total_tokens == 0, hit.usage
    # Another tenant never gets acme's cached answer.
    raw = globex.chat.completions.with_raw_response.create(
        model=MODEL, messages=user("Cache me [[usage:4:4]]")
    )
    assert raw.headers.get("x-cache") == "miss", raw.headers

    # Streaming with usage.
    stream = acme.chat.completions.create(
        model=MODEL,
        messages=user("Stream this please [[usage:20:9]]"),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"ANSWER[{MODEL}]: Stream this please [[usage:20:9]]", text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"], finishes
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 29, chunks[-1]
    assert all(c.object == "chat.completion.chunk" for c in chunks)

    # Streaming without usage, as a context manager.
    with acme.chat.completions.create(
        model=MODEL, messages=user("Short one"), stream=True
    ) as stream:
        parts = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(parts) == f"ANSWER[{MODEL}]: Short one", parts

    # An upstream that cuts its stream: the SDK raises while iterating.
    def cut():
        for _ in acme.chat.completions.create(
            model=MODEL, messages=user("[[cut-after:2]] a b c d"), stream=True
        ):
            pass

    expect(openai.APIError, cut)

    # The async client, streaming.
    async def run_async():
        aclient = AsyncOpenAI(
            base_url=BASE_URL, api_key=os.environ["TENANTRY_TOKEN"], max_retries=0
        )
        out = []
        stream = await aclient.chat.completions.create(
            model=MODEL, messages=user("Async hello"), stream=True
        )
        async for c in stream:
            if c.choices:
                out.append(c.choices[0].delta.content or "")
        await aclient.close()
        return "".join(out)

    assert asyncio.run(run_async()) == f"ANSWER[{MODEL}]: Async hello"

    # tenantry's extension through extra_body: retrieval from the tenant's documents.
    r = acme.chat.completions.create(
        model=MODEL,
        messages=user("How do refunds work?"),
        extra_body={"tenantry": {"rag": True}},
        extra_headers={"Cache-Control": "no-cache"},
    )
    sources = r.model_extra["tenantry"]["sources"]
    assert sources and "30 days" in sources[0]["text"], sources

    # Models.
    ids = [m.id for m in acme.models.list()]
    assert ids == [MODEL, EMBEDDING_MODEL], ids
    assert acme.models.retrieve(MODEL).id == MODEL
    expect(openai.NotFoundError, lambda: acme.models.retrieve("gpt-4o"))

    # Embeddings: the SDK asks for base64 by default and decodes it.
    e = acme.embeddings.create(model=EMBEDDING_MODEL, input=["refunds", "money back", "harbour"])
    assert [d.index for d in e.data] == [0, 1, 2]
    vecs = [d.embedding for d in e.data]
    assert all(len(v) == 384 for v in vecs)
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))
    assert abs(dot(vecs[0], vecs[0]) - 1.0) < 1e-3
    assert dot(vecs[0], vecs[1]) > dot(vecs[0], vecs[2])
    assert e.usage.prompt_tokens > 0 and e.usage.total_tokens == e.usage.prompt_tokens
    f = acme.embeddings.create(model=EMBEDDING_MODEL, input="refunds", encoding_format="float")
    assert f.data[0].embedding == vecs[0]
    raw = acme.embeddings.with_raw_response.create(
        model=EMBEDDING_MODEL, input="refunds", encoding_format="base64"
    )
    b64 = raw.http_response.json()["data"][0]["embedding"]
    decoded = list(struct.unpack(f"<{384}f", base64.b64decode(b64)))
    assert decoded == vecs[0]

    # Refusals raise the SDK's matching exceptions.
    e = expect(
        openai.NotFoundError,
        lambda: acme.chat.completions.create(model="gpt-4o", messages=user("hi")),
    )
    assert e.status_code == 404 and e.body["param"] == "model", e.body
    assert e.body["code"] == "model_not_found", e.body
    assert e.response.headers["x-request-id"], e.response.headers
    e = expect(
        openai.BadRequestError,
        lambda: acme.chat.completions.create(model=MODEL, messages=user("hi"), temperature=5),
    )
    assert e.body["type"] == "invalid_request_error" and e.body["param"] == "temperature"
    e = expect(
        openai.AuthenticationError,
        lambda: client("not-a-token").chat.completions.create(model=MODEL, messages=user("hi")),
    )
    assert e.code == "invalid_api_key", e.body
    # Every response names its request (the SDK reads `x-request-id`).
    raw = acme.chat.completions.with_raw_response.create(model=MODEL, messages=user("id?"))
    assert len(raw.headers.get("x-request-id", "")) == 32, raw.headers
    assert raw.parse()._request_id == raw.headers["x-request-id"]
    raw = acme.models.with_raw_response.list()
    assert raw.headers.get("x-request-id"), raw.headers
    raw = acme.embeddings.with_raw_response.create(model=EMBEDDING_MODEL, input="id")
    assert raw.headers.get("x-request-id"), raw.headers
    e = expect(openai.NotFoundError, lambda: acme.models.retrieve("nope"))
    assert e.request_id, e.response.headers
    expect(
        openai.InternalServerError,
        lambda: acme.chat.completions.create(model=MODEL, messages=user("x [[fail]]")),
    )

    # Rate limits: 429 with Retry-After, raised as RateLimitError.
    limited = client(os.environ["TENANTRY_LIMITED_TOKEN"])
    for i in range(3):
        limited.chat.completions.create(model=MODEL, messages=user(f"q{i}"))
    e = expect(
        openai.RateLimitError,
        lambda: limited.chat.completions.create(model=MODEL, messages=user("one too many")),
    )
    assert int(e.response.headers["retry-after"]) >= 1, e.response.headers
    assert e.code == "rate_limit_exceeded", e.body
    reset = e.response.headers["x-ratelimit-reset-requests"]
    assert reset.endswith("s") and reset[:-1].replace("m", "").isdigit(), reset

    print("ok")


if __name__ == "__main__":
    main()
