"""kvlm serve: structured output (issue 17). response_format json_object and json_schema, llama.cpp's
json_schema and grammar fields, on /v1/chat/completions and /v1/completions: the output parses as
JSON and is valid against the schema (a small validator written here, independent of the server's
converter); streamed and non-streamed texts agree; a bad schema or grammar is a 400 with an
OpenAI-style error; the compiled grammars are cached (metrics count hits).
"""
import json
import re
import threading

import pytest

from test_server import Server, stream, stream_text


def valid(schema, x, root=None):
    """True when x is valid against schema (the keywords these tests use)."""
    root = root if root is not None else schema
    if schema is True or schema == {}:
        return True
    if "$ref" in schema:
        t = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            t = t[part]
        if not valid(t, x, root):
            return False
    ty = schema.get("type")
    if ty is not None:
        types = ty if isinstance(ty, list) else [ty]
        ok = False
        for t in types:
            ok = ok or {"string": isinstance(x, str),
                        "integer": isinstance(x, int) and not isinstance(x, bool),
                        "number": isinstance(x, (int, float)) and not isinstance(x, bool),
                        "boolean": isinstance(x, bool), "null": x is None,
                        "object": isinstance(x, dict), "array": isinstance(x, list)}[t]
        if not ok:
            return False
    if "enum" in schema and x not in schema["enum"]:
        return False
    if "const" in schema and x != schema["const"]:
        return False
    if "anyOf" in schema and not any(valid(s, x, root) for s in schema["anyOf"]):
        return False
    if isinstance(x, dict):
        props = schema.get("properties", {})
        for k, v in x.items():
            if k in props:
                if not valid(props[k], v, root):
                    return False
            elif schema.get("additionalProperties", True) is False:
                return False
        if any(k not in x for k in schema.get("required", [])):
            return False
    if isinstance(x, list):
        if "items" in schema and not all(valid(schema["items"], i, root) for i in x):
            return False
        if len(x) < schema.get("minItems", 0) or len(x) > schema.get("maxItems", 1 << 30):
            return False
    if isinstance(x, str):
        if len(x) < schema.get("minLength", 0) or len(x) > schema.get("maxLength", 1 << 30):
            return False
        if "pattern" in schema and not re.search(schema["pattern"], x):
            return False
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        if x < schema.get("minimum", float("-inf")) or x > schema.get("maximum", float("inf")):
            return False
    return True


# a tool call's arguments: everything bounded, so generation always finishes
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 10},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "hourly": {"type": "boolean"},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
ITEMS = {
    "$defs": {"item": {"type": "object", "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{2}$"},
                                                         "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
                       "required": ["sku", "qty"]}},
    "type": "array", "items": {"$ref": "#/$defs/item"}, "minItems": 1, "maxItems": 3,
}


@pytest.fixture(scope="module")
def srv():
    s = Server("-c", "512", "--parallel", "4")
    yield s
    assert s.stop() == 0


def chat_body(**kw):
    return dict({"messages": [{"role": "user", "content": "Weather?"}], "max_tokens": 400, "temperature": 1.0}, **kw)


def text_of(r, chat):
    c = r.json()["choices"][0]
    return (c["message"]["content"] if chat else c["text"]), c["finish_reason"]


@pytest.mark.parametrize("schema", [WEATHER, ITEMS], ids=["weather", "items"])
def test_json_schema_response_format_is_valid(srv, schema):
    rf = {"type": "json_schema", "json_schema": {"name": "args", "schema": schema, "strict": True}}
    for seed in range(1, 7):
        for chat in (True, False):
            body = chat_body(seed=seed, response_format=rf)
            if not chat:
                body = {k: v for k, v in body.items() if k != "messages"}
                body["prompt"] = "Weather?"
            r = srv.post("/v1/chat/completions" if chat else "/v1/completions", body)
            assert r.status_code == 200, r.text
            text, finish = text_of(r, chat)
            assert finish == "stop", (seed, chat, text)
            value = json.loads(text)
            assert valid(schema, value), (seed, chat, text)


def test_json_object_and_llama_cpp_fields(srv):
    # json_object: the same grammar as the schema {"type": "object"}, so the same text for a seed
    for seed in (1, 2, 3):
        a = srv.post("/v1/chat/completions", chat_body(seed=seed, max_tokens=40, response_format={"type": "json_object"}))
        b = srv.post("/v1/chat/completions", chat_body(seed=seed, max_tokens=40, json_schema={"type": "object"}))
        assert a.status_code == 200 and b.status_code == 200, (a.text, b.text)
        ta, fa = text_of(a, True)
        assert ta == text_of(b, True)[0] and ta.lstrip().startswith("{"), ta
        if fa == "stop":
            assert isinstance(json.loads(ta), dict)
    # json_object with llama.cpp's "schema", and the json_schema field, on completions
    for body in ({"response_format": {"type": "json_object", "schema": WEATHER}}, {"json_schema": WEATHER}):
        r = srv.post("/v1/completions", dict({"prompt": "Hi", "max_tokens": 400, "temperature": 1.0, "seed": 9}, **body))
        text, finish = text_of(r, False)
        assert finish == "stop" and valid(WEATHER, json.loads(text)), text
    # grammar: GBNF text
    seen = set()
    for seed in range(1, 9):
        r = srv.post("/v1/completions", {"prompt": "Hi", "max_tokens": 20, "temperature": 1.0, "seed": seed,
                                         "grammar": 'root ::= ("yes" | "no") "!"'})
        text, finish = text_of(r, False)
        assert text in ("yes!", "no!") and finish == "stop", text
        seen.add(text)
    assert len(seen) == 2


def test_stream_and_choices_under_a_schema(srv):
    rf = {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER}}
    body = chat_body(seed=5, n=3, response_format=rf)
    r = srv.post("/v1/chat/completions", body)
    texts = [c["message"]["content"] for c in r.json()["choices"]]
    assert len(texts) == 3
    for t in texts:
        assert valid(WEATHER, json.loads(t)), t
    chunks = stream(srv, "/v1/chat/completions", body)
    assert stream_text(chunks, True, 3) == (texts, ["stop"] * 3)


def test_concurrent_requests_share_the_cached_grammar(srv):
    schema = dict(WEATHER, title="concurrent")  # a text no other test sends
    m0 = srv.metrics()
    results = [None] * 8

    def one(i):
        r = srv.post("/v1/completions", {"prompt": "Hi", "max_tokens": 400, "temperature": 1.0, "seed": 100 + i,
                                         "json_schema": schema})
        results[i] = r

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        assert r.status_code == 200, r.text
        text, finish = text_of(r, False)
        assert finish == "stop" and valid(WEATHER, json.loads(text)), text
    m = srv.metrics()
    hits = m["kvlm:grammar_cache_hits_total"] - m0["kvlm:grammar_cache_hits_total"]
    misses = m["kvlm:grammar_cache_misses_total"] - m0["kvlm:grammar_cache_misses_total"]
    assert hits + misses == 8 and misses >= 1, (hits, misses)
    # once compiled, the same text is a hit
    r = srv.post("/v1/completions", {"prompt": "Hi", "max_tokens": 5, "json_schema": schema})
    assert r.status_code == 200
    m2 = srv.metrics()
    assert m2["kvlm:grammar_cache_hits_total"] == m["kvlm:grammar_cache_hits_total"] + 1
    assert m2["kvlm:grammar_cache_misses_total"] == m["kvlm:grammar_cache_misses_total"]
    assert 1 <= m2["kvlm:grammar_cache_entries"] <= 32


def test_cache_is_bounded(srv):
    for i in range(40):
        r = srv.post("/v1/completions", {"prompt": "Hi", "max_tokens": 2, "json_schema": {"const": i}})
        assert r.status_code == 200 and text_of(r, False)[0].startswith(str(i)), r.text
    assert srv.metrics()["kvlm:grammar_cache_entries"] == 32
    # the first ones were evicted: compiled again (a miss), and still right
    m = srv.metrics()
    r = srv.post("/v1/completions", {"prompt": "Hi", "max_tokens": 5, "json_schema": {"const": 0}})
    assert text_of(r, False)[0].strip() == "0"
    assert srv.metrics()["kvlm:grammar_cache_misses_total"] == m["kvlm:grammar_cache_misses_total"] + 1


BAD = [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}},
     "response_format.json_schema.schema", "invalid_json_schema", "must be one of"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "string", "not": {}}}}},
     "response_format.json_schema.schema", "invalid_json_schema", 'unsupported keyword "not"'),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
     "response_format.json_schema.schema", None, "is required"),
    ({"response_format": {"type": "json_schema"}}, "response_format", None, "needs 'json_schema'"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}, "strict": "yes"}}},
     "response_format.json_schema.strict", None, "boolean"),
    ({"response_format": {"type": "json_object", "schema": {"properties": {"a": {"format": "email"}}}}},
     "response_format", "invalid_json_schema", "at /properties/a"),
    ({"json_schema": {"$ref": "#/$defs/nothing"}}, "json_schema", "invalid_json_schema", "not found"),
    ({"json_schema": [1]}, "json_schema", None, "must be a JSON Schema"),
    ({"grammar": "root ::= [a-"}, "grammar", "invalid_grammar", "line 1, column"),
    ({"grammar": "root ::= x"}, "grammar", "invalid_grammar", "undefined rule"),
    ({"grammar": 5}, "grammar", None, "must be a string"),
    ({"grammar": 'root ::= "a"', "json_schema": {}}, "json_schema", None, "give one of"),
    ({"response_format": {"type": "json_object"}, "grammar": 'root ::= "a"'}, "response_format", None, "give one of"),
]


@pytest.mark.parametrize("extra,param,code,msg", BAD)
def test_bad_schema_or_grammar_is_400(srv, extra, param, code, msg):
    for path, body in (("/v1/completions", {"prompt": "Hi"}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]})):
        r = srv.post(path, dict(body, max_tokens=2, **extra))
        assert r.status_code == 400, (path, r.text)
        e = r.json()["error"]
        assert set(e) == {"message", "type", "param", "code"}
        assert e["param"] == param and e["type"] == "invalid_request_error" and e["code"] == code, e
        assert msg in e["message"] and param.split(".")[0] in e["message"], e
    srv.healthy()
