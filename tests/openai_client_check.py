"""Drives a tiergate node with the official OpenAI Python client, streaming and not.

Usage: openai_client_check.py BASE_URL   (e.g. http://127.0.0.1:8080/v1)
Prints one JSON object with what it saw; exits non-zero on the first failed expectation.
"""

import json
import sys

import openai
from openai import OpenAI


def main() -> int:
    base_url = sys.argv[1]
    client = OpenAI(base_url=base_url, api_key="not-needed", max_retries=0, timeout=60)
    seen = {}

    models = [m.id for m in client.models.list()]
    assert "tiergate" in models, models
    seen["models"] = models
    assert client.models.retrieve("tiergate").id == "tiergate"
    try:
        client.chat.completions.create(
            model="tiergate",
            messages=[{"role": "user", "content": "hi"}],
            response_format={"type": "json_object"},
        )
        raise AssertionError("a JSON mode tiergate cannot enforce was accepted")
    except openai.BadRequestError as err:
        assert "response_format" in str(err), err

    messages = [{"role": "user", "content": "turn on the kitchen lights"}]
    raw = client.chat.completions.with_raw_response.create(
        model="tiergate", messages=messages, max_tokens=24
    )
    completion = raw.parse()
    text = completion.choices[0].message.content
    assert text, completion
    assert completion.choices[0].finish_reason in ("stop", "length"), completion
    assert completion.usage.completion_tokens > 0, completion.usage
    routing = completion.model_extra["tiergate"]
    assert routing["tier"] in ("edge", "regional", "cloud"), routing
    assert raw.headers["x-tiergate-tier"] == routing["tier"], dict(raw.headers)
    seen["unary"] = {"text": text, "routing": routing}

    stream = client.chat.completions.create(
        model="tiergate",
        messages=messages,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    streamed = "".join(pieces)
    assert streamed == text, (streamed, text)
    assert finish in ("stop", "length"), finish
    assert usage is not None and usage.completion_tokens > 0, usage
    seen["stream"] = {"text": streamed, "chunks": len(pieces)}

    # Log probabilities, whole and streamed, read through the client's own types.
    asked = dict(model="tiergate", messages=messages, max_tokens=12, logprobs=True, top_logprobs=2)
    whole = client.chat.completions.create(**asked).choices[0].logprobs.content
    assert whole, "no logprobs.content"
    for entry in whole:
        assert entry.logprob <= 0, entry
        assert isinstance(entry.bytes, list), entry
        assert len(entry.top_logprobs) == 2, entry
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob, entry
        # Greedy: the chosen token is the most likely one.
        assert entry.token == entry.top_logprobs[0].token, entry
    streamed_entries = []
    for chunk in client.chat.completions.create(**asked, stream=True):
        for choice in chunk.choices:
            if choice.logprobs is not None and choice.logprobs.content:
                streamed_entries.extend(choice.logprobs.content)
    assert [e.token for e in streamed_entries] == [e.token for e in whole], (streamed_entries, whole)
    try:
        client.chat.completions.create(model="tiergate", messages=messages, logprobs=True, top_logprobs=21)
        raise AssertionError("top_logprobs 21 was accepted")
    except openai.BadRequestError as err:
        assert "top_logprobs" in str(err), err
    seen["logprobs"] = {"tokens": len(whole), "streamed": len(streamed_entries)}

    legacy = client.completions.create(
        model="tiergate", prompt="<|user|>hello<|end|><|assistant|>", max_tokens=8
    )
    assert legacy.choices[0].text is not None, legacy
    seen["completions"] = legacy.choices[0].text

    try:
        client.chat.completions.create(model="no-such-model", messages=messages)
    except Exception as error:  # the client raises BadRequestError for a 400
        assert getattr(error, "status_code", None) == 400, error
        seen["bad_model_status"] = error.status_code
    else:
        raise AssertionError("an unknown model was accepted")

    print(json.dumps(seen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
