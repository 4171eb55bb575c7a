"""``streamhost container`` in the LMI dialect: serving.properties in --model-dir, DJL's jsonlines and errors."""

from __future__ import annotations

import json

import httpx


def jsonlines(body: bytes) -> list[dict]:
    """Split an application/jsonlines body, insisting each line is what DJL's json.dumps would write."""
    assert body.endswith(b"\n"), "every line, the last one included, ends in a newline"
    lines = body.split(b"\n")[:-1]
    objects = []
    for line in lines:
        obj = json.loads(line)
        assert line == json.dumps(obj, ensure_ascii=False).encode(), line
        objects.append(obj)
    return objects


def test_serving_properties_reach_the_engine(lmi_url: str) -> None:
    assert httpx.get(lmi_url + "/ping").status_code == 200
    info = httpx.get(lmi_url + "/info").json()
    assert info["max_total_tokens"] == 300, "option.n_positions sets the token budget"
    assert info["model_dtype"] == "torch.float32", "option.dtype=fp32"


def test_jsonlines_token_stream_is_byte_exact(lmi_url: str) -> None:
    body = {"inputs": "Hello world", "parameters": {"max_new_tokens": 6, "details": True, "do_sample": False}}
    with httpx.stream("POST", lmi_url + "/invocations", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/jsonlines"
        assert response.headers["x-accel-buffering"] == "no"
        raw = response.read()
    lines = jsonlines(raw)
    assert len(lines) == 6
    for line in lines[:-1]:
        assert list(line) == ["token"] and list(line["token"])[:3] == ["id", "text", "log_prob"]
    last = lines[-1]
    assert last["generated_text"] == "".join(
        line["token"]["text"] for line in lines if not line["token"].get("special_token")
    )
    assert last["details"] == {"finish_reason": "length", "generated_tokens": 6, "inputs": "Hello world"}


def test_return_full_text_prefixes_the_inputs(lmi_url: str) -> None:
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 3, "return_full_text": True}}
    last = jsonlines(httpx.post(lmi_url + "/invocations", json=body).content)[-1]
    assert last["generated_text"].startswith("Hello")


def test_a_list_of_inputs_gets_a_list_of_answers(lmi_url: str) -> None:
    body = {"inputs": ["Hello", "Bonjour"], "parameters": {"max_new_tokens": 3}}
    response = httpx.post(lmi_url + "/invocations", json=body)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    answers = response.json()
    assert len(answers) == 2 and all(set(a) == {"generated_text"} for a in answers)


def test_lmi_errors_have_djl_shape(lmi_url: str) -> None:
    cases = [
        (b'{"inputs": ""}', 424, "inputs"),
        (b'{"inputs": "x", "parameters": {"max_new_tokens": 0}}', 424, "max_new_tokens"),
        (b'{"inputs": "x", "parameters": {"max_new_tokens": 400}}', 424, "300"),
        (b'{"inputs": "x", "parameters": {"top_p": 2.0}}', 424, "top_p"),
        (b'{"inputs": ["a", "b"], "stream": true}', 424, "stream"),
        (b'{"inputs": "x"', 400, "JSON"),
        (b'{"nothing": 1}', 424, "inputs"),
    ]
    for body, status, fragment in cases:
        response = httpx.post(lmi_url + "/invocations", content=body, headers={"content-type": "application/json"})
        assert response.status_code == status, (body, response.text)
        payload = response.json()
        assert payload["code"] == status and fragment in payload["error"], (body, payload)


def test_openai_routes_still_work_in_the_lmi_dialect(lmi_url: str) -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    answer = httpx.post(lmi_url + "/invocations", json=body).json()
    assert answer["object"] == "chat.completion" and answer["usage"]["completion_tokens"] == 3
