"""Drives a running `tenantry serve` with the official `openai` SDK and `langchain-openai`,
unmodified, through what agent-style clients need: tool calls (a whole round trip, streamed
tool-call deltas), structured outputs (`chat.completions.parse` with a Pydantic model,
LangChain's `with_structured_output`) and `OpenAIEmbeddings` (which sends token arrays). Run by
tests/openai_sdk.rs with a scripted upstream that calls the first tool offered with arguments
built from its schema and the user message, answers tool results with
`TOOL-RESULT[<tool_call_id>]: <content>`, and answers a `response_format` with JSON built from
its schema (strings: the user message, integers: its word count, booleans: true).

Every request body the clients send that is answered 200 is printed as a line `sent <json>`, so that the Rust side
can check that the upstream received tools and response formats unchanged.

Environment: TENANTRY_BASE_URL, TENANTRY_TOKEN, TENANTRY_CL100K (tiktoken's cl100k_base file),
TIKTOKEN_CACHE_DIR (an empty folder).
Exits non-zero with a message on the first failed check; prints "ok" when all pass.
"""
import json
import math
import os

import httpx
import openai
import tiktoken
import tiktoken.load
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from openai import OpenAI
from pydantic import BaseModel

MODEL = "gpt-4o-mini"
EMBEDDING_MODEL = "all-MiniLM-L6-v2"
BASE_URL = os.environ["TENANTRY_BASE_URL"]
TOKEN = os.environ["TENANTRY_TOKEN"]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}


class Weather(BaseModel):
    city: str
    temperature: int
    sunny: bool


class GetWeather(BaseModel):
    """The current weather in a city."""

    city: str


def record(response):
    """httpx hook: prints the JSON body of every request answered 200."""
    if response.request.method == "POST" and response.status_code == 200:
        print("sent " + response.request.read().decode())


def http_client():
    return httpx.Client(event_hooks={"response": [record]}, timeout=30)


def user(text):
    return [{"role": "user", "content": text}]


def expect(exc_type, fn):
    try:
        fn()
    except exc_type as e:
        return e
    raise AssertionError(f"expected {exc_type.__name__}")


def openai_sdk():
    client = OpenAI(base_url=BASE_URL, api_key=TOKEN, max_retries=0, http_client=http_client())

    # Structured outputs: the SDK sends the model's strict JSON schema and parses the answer.
    r = client.chat.completions.parse(
        model=MODEL, messages=user("Weather in Oslo"), response_format=Weather
    )
    assert r.choices[0].message.parsed == Weather(
        city="Weather in Oslo", temperature=3, sunny=True
    ), r
    r = client.beta.chat.completions.parse(
        model=MODEL, messages=user("Weather in Rome"), response_format=Weather
    )
    assert r.choices[0].message.parsed.city == "Weather in Rome", r
    # A refusal comes back as the refusal, nothing parsed.
    r = client.chat.completions.parse(
        model=MODEL, messages=user("[[refuse]] Weather"), response_format=Weather
    )
    m = r.choices[0].message
    assert m.refusal == "I cannot help with that." and m.parsed is None and m.content is None, m

    # A tool round trip: the model asks for a call, the client sends the result back.
    messages = user("Oslo")
    r = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        tools=[WEATHER_TOOL],
        tool_choice="auto",
        parallel_tool_calls=False,
    )
    assert r.choices[0].finish_reason == "tool_calls", r
    m = r.choices[0].message
    assert m.content is None, m
    (call,) = m.tool_calls
    assert call.type == "function" and call.function.name == "get_weather", call
    assert json.loads(call.function.arguments) == {"city": "Oslo", "days": 1}, call
    messages.append(m)
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "12 degrees, sunny"})
    r = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL])
    assert r.choices[0].finish_reason == "stop", r
    assert r.choices[0].message.content == f"TOOL-RESULT[{call.id}]: 12 degrees, sunny", r

    # Streamed tool-call deltas: the id and name first, the arguments in pieces.
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=user("Bergen"),
            tools=[WEATHER_TOOL],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    deltas = [t for c in chunks if c.choices for t in (c.choices[0].delta.tool_calls or [])]
    assert len(deltas) > 2, deltas
    assert deltas[0].id and deltas[0].function.name == "get_weather", deltas[0]
    arguments = "".join(d.function.arguments or "" for d in deltas)
    assert json.loads(arguments) == {"city": "Bergen", "days": 1}, arguments
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"], finishes
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0, chunks[-1]
    # The SDK's stream helper puts the deltas back together and parses the arguments.
    with client.chat.completions.stream(
        model=MODEL,
        messages=user("Tromso"),
        tools=[openai.pydantic_function_tool(GetWeather)],
    ) as stream:
        final = stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls
    assert call.function.parsed_arguments == GetWeather(city="Tromso"), call

    # Malformed tools are refused, naming the field at fault.
    bad = dict(WEATHER_TOOL, function=dict(WEATHER_TOOL["function"], name="get weather!"))
    e = expect(
        openai.BadRequestError,
        lambda: client.chat.completions.create(model=MODEL, messages=user("x"), tools=[bad]),
    )
    assert e.body["param"] == "tools[0].function.name", e.body
    e = expect(
        openai.BadRequestError,
        lambda: client.chat.completions.create(
            model=MODEL, messages=user("x"), response_format={"type": "xml"}
        ),
    )
    assert e.body["param"] == "response_format.type", e.body

    # Token arrays to /v1/embeddings: decoded with cl100k_base, the same vectors as the text.
    text = client.embeddings.create(model=EMBEDDING_MODEL, input="refunds", encoding_format="float")
    ids = tiktoken.get_encoding("cl100k_base").encode("refunds")
    tokens = client.embeddings.create(model=EMBEDDING_MODEL, input=[ids], encoding_format="float")
    assert close(text.data[0].embedding, tokens.data[0].embedding)
    e = expect(
        openai.BadRequestError,
        lambda: client.embeddings.create(model=EMBEDDING_MODEL, input=[[999999999]]),
    )
    assert e.body["param"] == "input", e.body


def close(a, b):
    return len(a) == len(b) and all(math.isclose(x, y, abs_tol=1e-5) for x, y in zip(a, b))


def langchain():
    llm = ChatOpenAI(
        model=MODEL, base_url=BASE_URL, api_key=TOKEN, max_retries=0, http_client=http_client()
    )

    # bind_tools: the model's tool call, then the round trip with the tool's result.
    bound = llm.bind_tools([GetWeather])
    ai = bound.invoke("Paris")
    (call,) = ai.tool_calls
    assert call["name"] == "GetWeather" and call["args"] == {"city": "Paris"}, ai
    final = bound.invoke(
        [HumanMessage("Paris"), ai, ToolMessage(content="20 degrees", tool_call_id=call["id"])]
    )
    assert final.content == f"TOOL-RESULT[{call['id']}]: 20 degrees", final

    # with_structured_output: a Pydantic object back.
    w = llm.with_structured_output(Weather).invoke("Lima")
    assert w == Weather(city="Lima", temperature=1, sunny=True), w

    # OpenAIEmbeddings sends token arrays (tiktoken's cl100k_base): the same vectors as the
    # SDK gets for the text.
    emb = OpenAIEmbeddings(
        model=EMBEDDING_MODEL, base_url=BASE_URL, api_key=TOKEN, max_retries=0,
        http_client=http_client(),
    )
    texts = ["refunds", "money back", "harbour"]
    vectors = emb.embed_documents(texts)
    sdk = OpenAI(base_url=BASE_URL, api_key=TOKEN, max_retries=0)
    reference = sdk.embeddings.create(model=EMBEDDING_MODEL, input=texts, encoding_format="float")
    assert all(close(v, r.embedding) for v, r in zip(vectors, reference.data))
    assert close(emb.embed_query("refunds"), reference.data[0].embedding)


def offline_tiktoken():
    """tiktoken reads the cl100k_base file the test wrote instead of downloading it (it still
    checks the file's SHA-256)."""
    path = os.environ["TENANTRY_CL100K"]

    def read_file(blobpath):
        assert blobpath.endswith("/cl100k_base.tiktoken"), blobpath
        with open(path, "rb") as f:
            return f.read()

    tiktoken.load.read_file = read_file


def main():
    offline_tiktoken()
    openai_sdk()
    langchain()
    print("ok")


if __name__ == "__main__":
    main()
