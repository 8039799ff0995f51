"""kvlm serve: end-to-end tests over HTTP on 127.0.0.1.

Run by ctest (tests/CMakeLists.txt) with Debian's /usr/bin/python3 -m pytest;
KVLM_BIN is the kvlm binary, KVLM_MODELS the shared models directory.
Each server listens on --port 0 (a free port chosen by the kernel, printed
on stderr) and is stopped with SIGTERM at the end.
"""
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest
import requests

BIN = os.environ.get("KVLM_BIN", "build/bin/kvlm")
MODELS = os.environ.get("KVLM_MODELS", "../shared/models")
MODEL = os.path.join(MODELS, "llama", "aidreams260K-f32.gguf")
# a slower model for requests that must still be running while the test acts
SLOW_MODEL = os.path.join(MODELS, "llama", "synth15M-q8_0.gguf")
EOS = 2  # aidreams260K's end-of-sequence token
NO_EOS = {str(EOS): -100}  # bans it: generation runs to max_tokens


class Server:
    def __init__(self, *args, model=MODEL, env=None, wait_ready=True):
        self.log = tempfile.NamedTemporaryFile(prefix="kvlm-serve-", suffix=".log", delete=False)
        # under AddressSanitizer (make sanitize) freed memory would sit in its quarantine and look like
        # growth to the resident-memory test; leaks are still reported at exit
        env = dict(os.environ, **(env or {}))
        env["ASAN_OPTIONS"] = ":".join(x for x in (env.get("ASAN_OPTIONS", ""), "quarantine_size_mb=0") if x)
        self.proc = subprocess.Popen([BIN, "serve", "-m", model, "--host", "127.0.0.1", "--port", "0", *args],
                                     stdout=subprocess.DEVNULL, stderr=self.log, env=env)
        deadline = time.monotonic() + 20
        self.port = None
        while time.monotonic() < deadline and self.port is None:
            if self.proc.poll() is not None:
                raise RuntimeError("kvlm serve exited: " + self.stderr())
            for line in self.stderr().splitlines():
                if "listening on http://127.0.0.1:" in line:
                    self.port = int(line.split("127.0.0.1:")[1].split()[0])
            time.sleep(0.02)
        assert self.port, "server did not start: " + self.stderr()
        self.url = "http://127.0.0.1:%d" % self.port
        if wait_ready:
            self.wait_ready()

    def wait_ready(self, timeout=30):
        """It listens before the model is loaded: wait until /health says ok."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("kvlm serve exited: " + self.stderr())
            r = requests.get(self.url + "/health", timeout=30)
            if r.status_code == 200:
                return
            assert r.status_code == 503 and r.json() == {"status": "loading"}, r.text
            time.sleep(0.02)
        raise AssertionError("the model did not load: " + self.stderr())

    def stderr(self):
        with open(self.log.name, "r", errors="replace") as f:
            return f.read()

    def stop(self, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=timeout)
        log = self.stderr()
        os.unlink(self.log.name)
        assert rc == 0, "kvlm serve exited with %d:\n%s" % (rc, log[-4000:])
        return rc

    def post(self, path, body, **kw):
        kw.setdefault("timeout", 60)
        return requests.post(self.url + path, json=body, **kw)

    def get(self, path, **kw):
        kw.setdefault("timeout", 60)
        return requests.get(self.url + path, **kw)

    def metrics(self, **kw):
        r = self.get("/metrics", **kw)
        assert r.status_code == 200
        out = {}
        for line in r.text.splitlines():
            if line and not line.startswith("#"):
                name, val = line.rsplit(" ", 1)
                out[name] = float(val)
        return out

    def healthy(self):
        r = self.get("/health")
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        r = self.post("/v1/completions", {"prompt": "Hi", "max_tokens": 2, "temperature": 0})
        assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.fixture(scope="module")
def srv():
    s = Server("-c", "512", "--parallel", "4", "--queue", "128")
    yield s
    assert s.stop() == 0


def sse_events(resp):
    """The data payloads of an SSE response, checking the framing."""
    events = []
    buf = b""
    for chunk in resp.iter_content(chunk_size=None):
        buf += chunk
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            assert ev.startswith(b"data: "), ev
            events.append(ev[6:].decode("utf-8"))
    assert buf == b""
    return events


def stream(srv, path, body):
    body = dict(body, stream=True)
    with requests.post(srv.url + path, json=body, stream=True, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        evs = sse_events(r)
    assert evs[-1] == "[DONE]"
    return [json.loads(e) for e in evs[:-1]]


def stream_text(chunks, chat, n=1):
    texts = [""] * n
    finish = [None] * n
    for c in chunks:
        assert "error" not in c, c
        for ch in c["choices"]:
            i = ch["index"]
            assert finish[i] is None, "content after finish_reason"
            if chat:
                texts[i] += ch["delta"].get("content") or ""
            else:
                texts[i] += ch["text"]
            finish[i] = ch["finish_reason"]
    return texts, finish


# ------------------------------------------------------------ endpoints and shapes

def test_health_and_models(srv):
    r = srv.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = srv.get("/v1/models")
    assert r.status_code == 200
    d = r.json()
    assert d["object"] == "list" and len(d["data"]) == 1
    m = d["data"][0]
    assert m["id"] == "aidreams260K-f32.gguf" and m["object"] == "model" and "owned_by" in m
    assert srv.get("/v1/models/aidreams260K-f32.gguf").json()["id"] == m["id"]
    r = srv.get("/v1/models/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_completion_matches_cli(srv):
    prompt = "Once upon a time"
    r = srv.post("/v1/completions", {"model": "aidreams260K-f32.gguf", "prompt": prompt, "max_tokens": 24,
                                     "temperature": 0, "user": "ignored", "some_unknown_field": [1, 2]})
    assert r.status_code == 200
    d = r.json()
    assert d["object"] == "text_completion" and d["id"].startswith("cmpl-")
    assert isinstance(d["created"], int) and d["model"] == "aidreams260K-f32.gguf"
    assert len(d["choices"]) == 1
    ch = d["choices"][0]
    assert ch["index"] == 0 and ch["finish_reason"] in ("stop", "length") and ch["logprobs"] is None
    u = d["usage"]
    assert u["prompt_tokens"] > 0 and u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert u["completion_tokens"] <= 24
    assert u["prompt_tokens_details"]["cached_tokens"] >= 0
    # the CLI's greedy generation (a different code path: kvlm_generate) gives the same text
    cli = subprocess.run([BIN, "run", "-m", MODEL, "-p", prompt, "-n", "24", "-c", "512"],
                         capture_output=True, timeout=60)
    assert cli.returncode == 0
    assert cli.stdout.decode() == prompt + ch["text"] + "\n"


def test_chat_shape(srv):
    r = srv.post("/v1/chat/completions", {"messages": [{"role": "system", "content": "Be brief."},
                                                       {"role": "user", "content": "Tell me a story"}],
                                          "max_tokens": 16, "temperature": 0})
    assert r.status_code == 200
    d = r.json()
    assert d["object"] == "chat.completion" and d["id"].startswith("chatcmpl-")
    ch = d["choices"][0]
    assert ch["message"]["role"] == "assistant" and isinstance(ch["message"]["content"], str)
    assert ch["finish_reason"] in ("stop", "length")
    assert d["usage"]["completion_tokens"] <= 16
    # content given as text parts is the same conversation
    r2 = srv.post("/v1/chat/completions", {"messages": [{"role": "system", "content": [{"type": "text", "text": "Be "},
                                                                                       {"type": "text", "text": "brief."}]},
                                                        {"role": "user", "content": "Tell me a story"}],
                                           "max_completion_tokens": 16, "temperature": 0})
    assert r2.json()["choices"][0]["message"]["content"] == ch["message"]["content"]


def test_tokenize_detokenize(srv):
    text = "Once upon a time, there was a robot."
    r = srv.post("/tokenize", {"content": text})
    assert r.status_code == 200
    toks = r.json()["tokens"]
    cli = subprocess.run([BIN, "tokenize", "-m", MODEL, "-p", text, "--ids", "--no-bos"], capture_output=True,
                         timeout=60)
    assert cli.returncode == 0
    assert toks == [int(x) for x in cli.stdout.decode().replace("[", " ").replace("]", " ").replace(",", " ").split()]
    withbos = srv.post("/tokenize", {"content": text, "add_special": True}).json()["tokens"]
    assert withbos == [1] + toks
    pieces = srv.post("/tokenize", {"content": text, "with_pieces": True}).json()["tokens"]
    assert [p["id"] for p in pieces] == toks
    assert "".join(p["piece"] for p in pieces).strip() == text
    r = srv.post("/detokenize", {"tokens": toks})
    assert r.status_code == 200 and r.json()["content"].strip() == text
    assert srv.post("/detokenize", {"tokens": [100000]}).status_code == 400
    assert srv.post("/tokenize", {"content": 5}).json()["error"]["param"] == "content"


def test_prompt_as_token_ids(srv):
    prompt = "The little robot"
    ids = srv.post("/tokenize", {"content": prompt, "add_special": True}).json()["tokens"]
    a = srv.post("/v1/completions", {"prompt": prompt, "max_tokens": 12, "temperature": 0}).json()
    b = srv.post("/v1/completions", {"prompt": ids, "max_tokens": 12, "temperature": 0}).json()
    assert a["choices"][0]["text"] == b["choices"][0]["text"]
    assert a["usage"]["prompt_tokens"] == b["usage"]["prompt_tokens"] == len(ids)


# ------------------------------------------------------------ streaming

def test_stream_equals_non_stream_completion(srv):
    body = {"prompt": "In a quiet village", "max_tokens": 40, "temperature": 0}
    full = srv.post("/v1/completions", body).json()
    chunks = stream(srv, "/v1/completions", body)
    assert all(c["object"] == "text_completion" and "usage" not in c for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    texts, finish = stream_text(chunks, chat=False)
    assert texts[0] == full["choices"][0]["text"]
    assert finish[0] == full["choices"][0]["finish_reason"]
    assert chunks[-1]["choices"][0]["finish_reason"] is not None


def test_stream_equals_non_stream_chat_with_usage(srv):
    body = {"messages": [{"role": "user", "content": "Write about the sea"}], "max_tokens": 40, "temperature": 0,
            "stream_options": {"include_usage": True}}
    full = srv.post("/v1/chat/completions", body).json()
    chunks = stream(srv, "/v1/chat/completions", body)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:-1])
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == full["usage"]["completion_tokens"]
    texts, finish = stream_text(chunks[:-1], chat=True)
    assert texts[0] == full["choices"][0]["message"]["content"]
    assert finish[0] == full["choices"][0]["finish_reason"]
    # every event is valid UTF-8 on its own (checked by sse_events' decode), and no usage without include_usage
    body.pop("stream_options")
    assert all(c["choices"] for c in stream(srv, "/v1/chat/completions", body))


def test_stream_utf8_never_split(srv):
    # only the byte tokens of "\u00e9" (C3, A9) allowed, drawn at random: the text has whole characters
    # and stray bytes (U+FFFD); every event must decode on its own (sse_events decodes each separately),
    # and the joined text must equal the non-streamed text
    pieces = srv.post("/tokenize", {"content": "\u00e9", "with_pieces": True}).json()["tokens"]
    byte_ids = [p["id"] for p in pieces if isinstance(p["piece"], list)]
    assert len(byte_ids) == 2
    body = {"prompt": "caf", "max_tokens": 40, "temperature": 1.0, "seed": 5, "top_k": 0, "top_p": 1, "min_p": 0,
            "logit_bias": {str(t): 100 for t in byte_ids}}
    full = srv.post("/v1/completions", body).json()["choices"][0]["text"]
    chunks = stream(srv, "/v1/completions", body)
    texts, _ = stream_text(chunks, chat=False)
    assert texts[0] == full
    assert "\u00e9" in full
    assert set(full) <= {"\u00e9", "\ufffd"}


# ------------------------------------------------------------ sampling

def test_seeds(srv):
    body = {"prompt": "Once upon a time", "max_tokens": 32, "temperature": 1.0, "top_k": 0, "top_p": 1.0,
            "min_p": 0, "logit_bias": NO_EOS}
    a = srv.post("/v1/completions", dict(body, seed=1)).json()["choices"][0]["text"]
    b = srv.post("/v1/completions", dict(body, seed=1)).json()["choices"][0]["text"]
    c = srv.post("/v1/completions", dict(body, seed=2)).json()["choices"][0]["text"]
    assert a == b
    assert a != c
    # the streamed seeded text is the same too
    texts, _ = stream_text(stream(srv, "/v1/completions", dict(body, seed=1)), chat=False)
    assert texts[0] == a


def test_penalties_and_bias_change_output(srv):
    body = {"prompt": "Once upon a time", "max_tokens": 32, "temperature": 0, "logit_bias": NO_EOS}
    base = srv.post("/v1/completions", body).json()["choices"][0]["text"]
    for extra in ({"repeat_penalty": 1.5}, {"frequency_penalty": 1.5}, {"presence_penalty": 1.5}):
        r = srv.post("/v1/completions", dict(body, **extra))
        assert r.status_code == 200
        assert r.json()["choices"][0]["text"] != base, extra
    # banning the first greedy token changes the first token
    d = srv.post("/v1/completions", dict(body, logprobs=0)).json()
    first = d["choices"][0]["logprobs"]["tokens"][0]
    tid = srv.post("/tokenize", {"content": first, "with_pieces": True}).json()["tokens"]
    ids = [t["id"] for t in tid if t["piece"] == first]
    if ids:
        bias = dict(NO_EOS, **{str(ids[0]): -100})
        d2 = srv.post("/v1/completions", dict(body, logit_bias=bias, logprobs=0)).json()
        assert d2["choices"][0]["logprobs"]["tokens"][0] != first


def test_stop_strings_across_tokens(srv):
    body = {"prompt": "Once upon a time", "max_tokens": 40, "temperature": 0, "logprobs": 0, "logit_bias": NO_EOS}
    d = srv.post("/v1/completions", body).json()
    toks = d["choices"][0]["logprobs"]["tokens"]
    text = d["choices"][0]["text"]
    assert "".join(toks) == text
    # a stop string from the last character of token k to the first of token k+1..k+2
    k = next(i for i in range(3, len(toks) - 2) if len(toks[i]) >= 1 and len(toks[i + 1]) >= 1)
    start = len("".join(toks[:k + 1])) - 1
    stop = text[start:start + 1 + len(toks[k + 1])]
    assert len(stop) >= 2
    expect = text[:text.index(stop)]
    for s in (stop, [stop, "zzzz-never"]):
        r = srv.post("/v1/completions", dict(body, stop=s)).json()
        assert r["choices"][0]["text"] == expect
        assert r["choices"][0]["finish_reason"] == "stop"
        texts, finish = stream_text(stream(srv, "/v1/completions", dict(body, stop=s)), chat=False)
        assert texts[0] == expect and finish[0] == "stop"


def test_n_choices(srv):
    body = {"prompt": "The dragon", "max_tokens": 16, "temperature": 1.0, "seed": 7, "logit_bias": NO_EOS}
    one = srv.post("/v1/completions", body).json()["choices"][0]["text"]
    d = srv.post("/v1/completions", dict(body, n=3)).json()
    assert [c["index"] for c in d["choices"]] == [0, 1, 2]
    assert d["choices"][0]["text"] == one
    assert len({c["text"] for c in d["choices"]}) > 1
    assert d["usage"]["completion_tokens"] == 3 * 16
    # streamed: three choices, each ends with its own finish_reason
    texts, finish = stream_text(stream(srv, "/v1/completions", dict(body, n=3)), chat=False, n=3)
    assert texts == [c["text"] for c in d["choices"]]
    assert finish == ["length"] * 3
    # chat with n=2 at temperature 0: identical answers
    cd = srv.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "n": 2,
                                           "max_tokens": 8, "temperature": 0}).json()
    assert len(cd["choices"]) == 2
    assert cd["choices"][0]["message"] == cd["choices"][1]["message"]


def test_logprobs(srv):
    body = {"messages": [{"role": "user", "content": "Tell me about robots"}], "max_tokens": 12, "temperature": 0,
            "logprobs": True, "top_logprobs": 3}
    d = srv.post("/v1/chat/completions", body).json()
    content = d["choices"][0]["logprobs"]["content"]
    assert len(content) == d["usage"]["completion_tokens"]
    assert "".join(c["token"] for c in content) == d["choices"][0]["message"]["content"]
    for c in content:
        assert c["logprob"] <= 0
        assert len(c["top_logprobs"]) == 3
        assert c["top_logprobs"][0]["token"] == c["token"]
        assert c["top_logprobs"][0]["logprob"] == c["logprob"]
        assert c["top_logprobs"][0]["logprob"] >= c["top_logprobs"][1]["logprob"] >= c["top_logprobs"][2]["logprob"]
        assert bytes(c["bytes"]).decode("utf-8", "replace") == c["token"]
    # streamed logprobs: the same entries
    chunks = stream(srv, "/v1/chat/completions", body)
    streamed = [e for c in chunks for ch in c["choices"] if ch.get("logprobs") for e in ch["logprobs"]["content"]]
    assert streamed == content
    # completions: logprobs=N
    c = srv.post("/v1/completions", {"prompt": "Robots", "max_tokens": 8, "temperature": 0, "logprobs": 2}).json()
    lp = c["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"])
    assert all(x <= 0 for x in lp["token_logprobs"])
    for tok, l, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        assert max(top.values()) == l and top[tok] == l


def test_echo(srv):
    body = {"prompt": "Once upon a time", "max_tokens": 10, "temperature": 0, "logit_bias": NO_EOS}
    plain = srv.post("/v1/completions", body).json()
    d = srv.post("/v1/completions", dict(body, echo=True)).json()
    # the prompt, then the same completion; usage counts the generated tokens only
    assert d["choices"][0]["text"] == "Once upon a time" + plain["choices"][0]["text"]
    assert d["usage"] == dict(plain["usage"], prompt_tokens_details=d["usage"]["prompt_tokens_details"])
    texts, finish = stream_text(stream(srv, "/v1/completions", dict(body, echo=True)), chat=False)
    assert texts[0] == d["choices"][0]["text"] and finish[0] == "length"
    # token-id prompts echo their text
    ids = srv.post("/tokenize", {"content": "The robot"}).json()["tokens"]
    e = srv.post("/v1/completions", {"prompt": ids, "max_tokens": 1, "echo": True}).json()
    assert e["choices"][0]["text"].startswith(srv.post("/detokenize", {"tokens": ids}).json()["content"])
    # echo is a completions field: not an error for chat (unknown fields are ignored), and no echo there
    c = srv.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
                                          "temperature": 0, "echo": True}).json()
    assert "Hi" not in c["choices"][0]["message"]["content"]
    # without echo, max_tokens 0 stays an error
    assert srv.post("/v1/completions", {"prompt": "x", "max_tokens": 0}).json()["error"]["param"] == "max_tokens"


def test_echo_logprobs_score_the_prompt(srv):
    """echo + logprobs + max_tokens 0 scores a text (as evaluation harnesses use it): the prompt's
    logprobs must be exactly the logprobs the same tokens got when they were generated."""
    n_vocab = srv.get("/v1/models").json()["data"][0]["meta"]["n_vocab"]
    pieces = [srv.post("/detokenize", {"tokens": [i]}).json()["content"] for i in range(n_vocab)]
    prompt = srv.post("/tokenize", {"content": "The little robot", "add_special": True}).json()["tokens"]
    gen = srv.post("/v1/completions", {"prompt": prompt, "max_tokens": 12, "temperature": 0, "logprobs": 3,
                                       "logit_bias": NO_EOS}).json()["choices"][0]["logprobs"]
    gen_ids = []
    for t in gen["tokens"]:
        # a piece names one token, but for the byte tokens (ids 3..258 in this vocabulary), which greedy
        # decoding does not pick here: if it did, the comparison below would fail
        ids = [i for i, p in enumerate(pieces) if p == t and not 3 <= i <= 258]
        assert len(ids) == 1, t
        gen_ids.append(ids[0])
    full = prompt + gen_ids
    d = srv.post("/v1/completions", {"prompt": full, "max_tokens": 0, "echo": True, "logprobs": 3}).json()
    ch = d["choices"][0]
    assert ch["finish_reason"] == "length" and d["usage"]["completion_tokens"] == 0
    lp = ch["logprobs"]
    assert lp["tokens"] == [pieces[i] for i in full]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert all(x <= 0 for x in lp["token_logprobs"][1:])
    assert lp["token_logprobs"][len(prompt):] == gen["token_logprobs"]
    assert lp["top_logprobs"][len(prompt):] == gen["top_logprobs"]
    assert ch["text"] == "".join(pieces[i] for i in full)
    assert lp["text_offset"] == sorted(lp["text_offset"])
    # echo with generation: the prompt's entries, then the generated ones; offsets past the echoed text
    d = srv.post("/v1/completions", {"prompt": prompt, "max_tokens": 12, "temperature": 0, "logprobs": 3,
                                     "logit_bias": NO_EOS, "echo": True}).json()
    lp = d["choices"][0]["logprobs"]
    assert lp["tokens"] == [pieces[i] for i in prompt] + gen["tokens"]
    assert lp["token_logprobs"][len(prompt):] == gen["token_logprobs"]
    echo_len = len(d["choices"][0]["text"].encode()) - len("".join(gen["tokens"]).encode())
    assert [o - echo_len for o in lp["text_offset"][len(prompt):]] == gen["text_offset"]
    # streamed: the same entries
    chunks = stream(srv, "/v1/completions", {"prompt": prompt, "max_tokens": 12, "temperature": 0, "logprobs": 3,
                                             "logit_bias": NO_EOS, "echo": True})
    streamed = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for c in chunks:
        for x in c["choices"]:
            for k in streamed:
                streamed[k] += (x["logprobs"] or {}).get(k, [])
    assert streamed == lp


# ------------------------------------------------------------ engine

def long_prefix():
    return ("Once upon a time, in a land of tall mountains and deep rivers, there lived a little robot who "
            "loved to read stories about the stars and the sea. Every morning the robot walked to the old "
            "library and opened a new book, and every evening it told the stories to the birds. ")


def test_cached_tokens_on_shared_prefix(srv):
    p = long_prefix()
    a = srv.post("/v1/completions", {"prompt": p + "One day", "max_tokens": 4, "temperature": 0}).json()
    assert a["usage"]["prompt_tokens"] > 64
    b = srv.post("/v1/completions", {"prompt": p + "The birds", "max_tokens": 4, "temperature": 0}).json()
    cached = b["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached >= 32  # at least one full page of the shared prefix
    assert cached < b["usage"]["prompt_tokens"]
    m = srv.metrics()
    assert m["kvlm:prompt_tokens_cached_total"] >= cached
    assert m["kvlm:prefix_cache_hits_total"] >= cached


def test_prefix_from_another_slot_reused_across_chunks():
    """A prompt longer than a prefill chunk whose prefix another slot computed takes every full page
    of it from the shared pool (not only those a chunk boundary leaves whole)."""
    import random
    rng = random.Random(7)
    x = [1] + [rng.randrange(300, 30000) for _ in range(299)]
    s = Server("-c", "2048", "--parallel", "2", model=SLOW_MODEL)  # prefill chunks of 128, pages of 32
    try:
        assert s.post("/v1/completions", {"prompt": x, "max_tokens": 1}).status_code == 200
        # the slot that holds x stays busy: the next request gets the other slot, with nothing of its own
        c = open_stream(s.url, {"prompt": x, "max_tokens": 1800, "temperature": 0, "logit_bias": NO_EOS})
        try:
            wait_for(lambda: (lambda m: m["kvlm:requests_running"] == 1 and m["kvlm:requests_prefilling"] == 0)(
                s.metrics()), "x to be decoding")
            y = x[:288] + [rng.randrange(300, 30000) for _ in range(5)]
            d = s.post("/v1/completions", {"prompt": y, "max_tokens": 4, "temperature": 0}).json()
            assert d["usage"]["prompt_tokens_details"]["cached_tokens"] == 288  # all 9 full pages
            assert s.metrics()["kvlm:requests_running"] == 1
        finally:
            c.close()
        # the same text as when nothing was cached (a fresh server)
        other = Server("-c", "2048", "--parallel", "1", model=SLOW_MODEL)
        try:
            d2 = other.post("/v1/completions", {"prompt": y, "max_tokens": 4, "temperature": 0}).json()
            assert d2["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
            assert d2["choices"][0]["text"] == d["choices"][0]["text"]
        finally:
            assert other.stop() == 0
    finally:
        assert s.stop() == 0


def test_choices_take_the_shared_pages(srv):
    """n = 4 choices of a prompt whose first 256 tokens are cached: choice 0 (in the slot that holds
    them) computes the new 100, the other three, read in the steps after it, take every full page
    (352 tokens) from the pool, whatever their slots held before; all four give the same text."""
    import random
    rng = random.Random(11)
    a = [1] + [rng.randrange(259, 512) for _ in range(255)]
    tail = [rng.randrange(259, 512) for _ in range(101)]
    # every slot holds something that starts like the prompt (BOS) and nothing more
    junk = [1] + [rng.randrange(259, 512) for _ in range(40)]
    assert srv.post("/v1/completions", {"prompt": junk, "n": 4, "max_tokens": 1}).status_code == 200
    assert srv.post("/v1/completions", {"prompt": a + [tail[0] ^ 1], "max_tokens": 1}).status_code == 200
    m0 = srv.metrics()
    d = srv.post("/v1/completions", {"prompt": a + tail, "n": 4, "max_tokens": 8, "temperature": 0}).json()
    m1 = srv.metrics()
    assert d["usage"]["prompt_tokens"] == 357 and d["usage"]["prompt_tokens_details"]["cached_tokens"] == 256
    assert m1["kvlm:prefix_cache_queries_total"] - m0["kvlm:prefix_cache_queries_total"] == 4 * 357
    assert m1["kvlm:prefix_cache_hits_total"] - m0["kvlm:prefix_cache_hits_total"] == 256 + 3 * 352
    assert m1["kvlm:prompt_tokens_cached_total"] - m0["kvlm:prompt_tokens_cached_total"] == 256
    assert len({c["text"] for c in d["choices"]}) == 1


def test_chat_follow_up_reuses_previous_turn(srv):
    turn1 = [{"role": "system", "content": "You tell short stories about animals."},
             {"role": "user", "content": "Tell me about a fox who lived in the forest."}]
    a = srv.post("/v1/chat/completions", {"messages": turn1, "max_tokens": 20, "temperature": 0}).json()
    answer = a["choices"][0]["message"]["content"]
    turn2 = turn1 + [{"role": "assistant", "content": answer}, {"role": "user", "content": "And then?"}]
    b = srv.post("/v1/chat/completions", {"messages": turn2, "max_tokens": 4, "temperature": 0}).json()
    # everything of turn 1's prompt (but the token at the boundary) was reused
    assert b["usage"]["prompt_tokens_details"]["cached_tokens"] >= a["usage"]["prompt_tokens"] - 2
    assert b["usage"]["prompt_tokens"] > a["usage"]["prompt_tokens"]


def test_exact_under_load():
    """A request's text and logprobs are byte-identical alone (cold), among 8 other requests that are
    decoding in the same batched steps for its whole duration, once its prefix is cached, and on a
    one-slot server that reads prompts in chunks of 7."""
    s = Server("-c", "2048", "--parallel", "9", model=SLOW_MODEL)
    reqs = [
        ("/v1/completions", {"prompt": "Alpha. " + long_prefix() + "Then", "max_tokens": 40,
                             "temperature": 0, "logprobs": 2, "logit_bias": NO_EOS}),
        ("/v1/completions", {"prompt": "Bravo. " + long_prefix() + "Then", "max_tokens": 40,
                             "temperature": 0.9, "seed": 1234, "logprobs": 2, "logit_bias": NO_EOS}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Charlie. " + long_prefix()}],
                                  "max_tokens": 40, "temperature": 0.8, "seed": 99, "logprobs": True,
                                  "top_logprobs": 2, "logit_bias": NO_EOS}),
    ]
    # the other requests: different prompts, lengths and sampling, far longer than the measured one
    others = [{"prompt": "Story %d: the %s" % (i, w) + " and the sea" * i, "max_tokens": 1800,
               "temperature": 0.7 if i % 2 else 0, "seed": i, "logit_bias": NO_EOS}
              for i, w in enumerate(["cat", "dog", "moon", "king", "sea", "tree", "fox", "owl"])]

    def result(srv, path, body):
        r = srv.post(path, body)
        assert r.status_code == 200, r.text
        d = r.json()
        ch = d["choices"][0]
        text = ch.get("text", ch.get("message", {}).get("content"))
        return text, json.dumps(ch["logprobs"], sort_keys=True), d["usage"]["prompt_tokens_details"]["cached_tokens"]

    expected = []
    try:
        for path, body in reqs:
            assert s.metrics()["kvlm:requests_running"] == 0
            alone = result(s, path, body)
            assert alone[2] <= 1  # cold: nothing of its prompt was cached (but BOS, that a slot may hold)
            socks = [open_stream(s.url, b) for b in others]
            try:
                wait_for(lambda: (lambda m: m["kvlm:requests_running"] == 8 and m["kvlm:requests_prefilling"] == 0)(
                    s.metrics()), "the 8 other requests to be decoding")
                m0 = s.metrics()
                loaded = result(s, path, body)
                m1 = s.metrics()
                # the others ran all along: every step of the measured request was a batch of 9
                assert m1["kvlm:requests_running"] == 8
                assert m1['kvlm:requests_total{finish_reason="length"}'] == m0['kvlm:requests_total{finish_reason="length"}'] + 1
                steps = m1["kvlm:decode_steps_total"] - m0["kvlm:decode_steps_total"]
                seqs = m1["kvlm:decode_sequences_total"] - m0["kvlm:decode_sequences_total"]
                assert steps >= 39 and seqs >= 8 * steps + 39, (steps, seqs)
            finally:
                for c in socks:
                    c.close()
            wait_for(lambda: s.metrics()["kvlm:requests_running"] == 0, "the others to be cancelled")
            cached = result(s, path, body)
            assert cached[2] > 0
            assert alone[0] == loaded[0] == cached[0]
            assert alone[1] == loaded[1] == cached[1]
            expected.append(alone)
    finally:
        assert s.stop() == 0
    # another server with one slot and a small prefill chunk: the same bytes
    other = Server("-c", "2048", "--parallel", "1", "--prefill-chunk", "7", model=SLOW_MODEL)
    try:
        for (path, body), want in zip(reqs, expected):
            got = result(other, path, body)
            assert got[:2] == want[:2]
    finally:
        assert other.stop() == 0


def test_many_concurrent_streams(srv):
    errors = []
    done = []

    def client(i):
        try:
            chunks = stream(srv, "/v1/completions", {"prompt": "Client %d says" % i, "max_tokens": 12,
                                                     "temperature": 0.5, "seed": i})
            texts, finish = stream_text(chunks, chat=False)
            assert finish[0] in ("stop", "length")
            done.append(i)
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(repr(e))

    ts = [threading.Thread(target=client, args=(i,)) for i in range(64)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []
    assert len(done) == 64
    srv.healthy()


def wait_for(pred, what, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError("timed out waiting for " + what)


def open_stream(url, body):
    """A raw streaming request; returns the socket after the first event arrived."""
    host, port = url.replace("http://", "").split(":")
    s = socket.create_connection((host, int(port)), timeout=30)
    data = json.dumps(dict(body, stream=True)).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(data) + data)
    return s


def test_disconnect_frees_slot():
    s = Server("-c", "4096", "--parallel", "1", "--queue", "4", model=SLOW_MODEL)
    try:
        long_body = {"prompt": "Forever", "max_tokens": 4000, "temperature": 0, "logit_bias": NO_EOS}
        # during decode: read the first bytes, then hang up
        c = open_stream(s.url, long_body)
        assert c.recv(4096).startswith(b"HTTP/1.1 200")
        wait_for(lambda: s.metrics()["kvlm:requests_running"] == 1, "the request to run")
        # while queued: a second request behind it, non-streaming, then hang up
        q = socket.create_connection(("127.0.0.1", s.port), timeout=30)
        data = json.dumps({"prompt": "Queued", "max_tokens": 5}).encode()
        q.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(data) + data)
        wait_for(lambda: s.metrics()["kvlm:requests_waiting"] == 1, "the second request to wait")
        q.close()
        wait_for(lambda: s.metrics()["kvlm:requests_waiting"] == 0, "the queued request to be dropped")
        c.close()
        wait_for(lambda: s.metrics()["kvlm:requests_running"] == 0, "the slot to be freed")
        m = s.metrics()
        assert m["kvlm:cancelled_total"] == 2
        assert m['kvlm:requests_total{finish_reason="cancelled"}'] == 2
        s.healthy()
        assert "499" in s.stderr()
    finally:
        assert s.stop() == 0


def test_disconnect_non_streaming_during_decode_frees_slot():
    s = Server("-c", "4096", "--parallel", "1", model=SLOW_MODEL)
    try:
        c = socket.create_connection(("127.0.0.1", s.port), timeout=30)
        data = json.dumps({"prompt": "Forever", "max_tokens": 4000, "temperature": 0, "logit_bias": NO_EOS}).encode()
        c.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(data) + data)
        wait_for(lambda: s.metrics()["kvlm:generation_tokens_total"] > 0, "the request to decode")
        c.close()
        wait_for(lambda: s.metrics()["kvlm:requests_running"] == 0, "the slot to be freed")
        m = s.metrics()
        assert m["kvlm:cancelled_total"] == 1 and m['kvlm:requests_total{finish_reason="cancelled"}'] == 1
        assert 0 < m["kvlm:generation_tokens_total"] < 4000
        s.healthy()
    finally:
        assert s.stop() == 0


def test_disconnect_during_prefill_frees_slot():
    s = Server("-c", "4096", "--parallel", "2", "--prefill-chunk", "4", model=SLOW_MODEL)
    try:
        ids = [1] + [100 + (i * 37) % 20000 for i in range(3500)]
        c = open_stream(s.url, {"prompt": ids, "max_tokens": 4, "temperature": 0})
        wait_for(lambda: s.metrics()["kvlm:requests_prefilling"] == 1, "the prompt to be read")
        c.close()
        wait_for(lambda: s.metrics()["kvlm:requests_running"] == 0, "the slot to be freed")
        m = s.metrics()
        assert m["kvlm:cancelled_total"] == 1
        assert m["kvlm:generation_tokens_total"] == 0  # it never got to decode
        s.healthy()
    finally:
        assert s.stop() == 0


def test_queue_full_503():
    s = Server("-c", "4096", "--parallel", "1", "--queue", "1", model=SLOW_MODEL)
    try:
        c = open_stream(s.url, {"prompt": "Forever", "max_tokens": 4000, "temperature": 0, "logit_bias": NO_EOS})
        wait_for(lambda: s.metrics()["kvlm:requests_running"] == 1, "the first request to run")
        res = {}
        t2 = threading.Thread(target=lambda: res.setdefault("b", s.post("/v1/completions",
                                                                        {"prompt": "second", "max_tokens": 3})))
        t2.start()
        wait_for(lambda: s.metrics()["kvlm:requests_waiting"] == 1, "the second request to wait")
        r = s.post("/v1/completions", {"prompt": "third", "max_tokens": 3})
        assert r.status_code == 503
        assert r.headers["Retry-After"] == "1"
        assert r.json()["error"]["code"] == "queue_full"
        assert s.metrics()['kvlm:requests_total{finish_reason="rejected"}'] == 1
        c.close()  # frees the slot: the queued one runs
        t2.join()
        assert res["b"].status_code == 200 and res["b"].json()["usage"]["completion_tokens"] == 3
        s.healthy()
        # more choices than slots could never be admitted: refused up front
        r = s.post("/v1/completions", {"prompt": "x", "n": 2, "max_tokens": 2})
        assert r.status_code == 400 and r.json()["error"]["param"] == "n"
    finally:
        assert s.stop() == 0


def test_queue_zero_still_serves():
    s = Server("-c", "256", "--parallel", "2", "--queue", "0")
    try:
        s.healthy()
    finally:
        assert s.stop() == 0


def test_timeout():
    s = Server("-c", "4096", "--parallel", "2", "--timeout", "0.5", model=SLOW_MODEL)
    try:
        r = s.post("/v1/completions", {"prompt": "Forever", "max_tokens": 4000, "temperature": 0,
                                       "logit_bias": NO_EOS})
        d = r.json()
        # ended by --timeout with what it had generated
        assert d["choices"][0]["finish_reason"] == "timeout"
        assert 0 < d["usage"]["completion_tokens"] < 4000
        assert len(d["choices"][0]["text"]) > 0
        chunks = stream(s, "/v1/completions", {"prompt": "Forever", "max_tokens": 4000, "logit_bias": NO_EOS})
        assert chunks[-1]["choices"][0]["finish_reason"] == "timeout"
        assert s.metrics()['kvlm:requests_total{finish_reason="timeout"}'] == 2
    finally:
        assert s.stop() == 0


# ------------------------------------------------------------ errors

BAD_FIELDS = [
    ("max_tokens", "ten"), ("max_tokens", 0), ("max_tokens", 1.5), ("max_completion_tokens", -1),
    ("temperature", "hot"), ("temperature", -1), ("top_p", 2), ("top_p", "x"), ("top_k", -3), ("top_k", 2.5),
    ("min_p", 1.5), ("stop", 5), ("stop", [""]), ("stop", ["a", 3]), ("stop", ["s"] * 17), ("seed", "abc"),
    ("seed", 1.5), ("presence_penalty", 3), ("frequency_penalty", "no"), ("repeat_penalty", 0),
    ("logit_bias", [1]), ("logit_bias", {"abc": 1}), ("logit_bias", {"5": "x"}), ("logit_bias", {"999999": 1}),
    ("logit_bias", {"5": 200}), ("n", 0), ("n", 9), ("stream", "yes"), ("stream_options", 3), ("user", 5),
    ("logprobs", "x"), ("logprobs", 21), ("model", 5), ("echo", "yes"), ("suffix", 5), ("best_of", 0),
    ("best_of", 1.5), ("response_format", "json"), ("response_format", {"type": "yaml"}), ("tools", {}),
    ("tool_choice", 3),
]


@pytest.mark.parametrize("name,value", BAD_FIELDS)
def test_bad_field_is_400_naming_it(srv, name, value):
    r = srv.post("/v1/completions", {"prompt": "Hi", "max_tokens": 2, name: value})
    assert r.status_code == 400, r.text
    e = r.json()["error"]
    assert e["param"] == name and e["type"] == "invalid_request_error" and name in e["message"]
    assert set(e) == {"message", "type", "param", "code"}


UNSUPPORTED = [
    ("suffix", "after"), ("best_of", 2),
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]), ("tool_choice", "required"),
    ("tool_choice", {"type": "function", "function": {"name": "f"}}), ("functions", [{"name": "f"}]),
    ("function_call", {"name": "f"}),
]


@pytest.mark.parametrize("name,value", UNSUPPORTED)
def test_unsupported_field_is_400(srv, name, value):
    """What kvlm cannot do is refused, not silently ignored."""
    paths = ["/v1/completions"] + ([] if name in ("suffix", "best_of") else ["/v1/chat/completions"])
    for path in paths:
        body = {"prompt": "Hi"} if path == "/v1/completions" else {"messages": [{"role": "user", "content": "Hi"}]}
        r = srv.post(path, dict(body, max_tokens=2, **{name: value}))
        assert r.status_code == 400, (path, r.text)
        e = r.json()["error"]
        assert e["param"] == name and e["type"] == "invalid_request_error" and "not supported" in e["message"], e
    # their neutral values are fine
    for extra in ({"suffix": ""}, {"best_of": 1}, {"best_of": 2, "n": 2}, {"response_format": {"type": "text"}},
                  {"tools": []}, {"tool_choice": "none"}, {"tool_choice": "auto"}, {"functions": []}):
        r = srv.post("/v1/completions", dict({"prompt": "Hi", "max_tokens": 2}, **extra))
        assert r.status_code == 200, (extra, r.text)


def test_bad_chat_fields(srv):
    for body, param in [({"messages": "hi"}, "messages"), ({"messages": []}, "messages"), ({}, "messages"),
                        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
                        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
                        ({"messages": [{"role": "user"}]}, "messages[0].content"),
                        ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
                        ({"messages": [{"role": "user", "content": "x"}], "logprobs": 3}, "logprobs"),
                        # longer than the context (512): the message names 'messages' too (fuzz_server's contract)
                        ({"messages": [{"role": "user", "content": "tell me a story " * 400}]}, "messages")]:
        r = srv.post("/v1/chat/completions", body)
        assert r.status_code == 400, body
        e = r.json()["error"]
        assert e["param"] == param and param.split("[")[0] in e["message"], e
    srv.healthy()


def raw(srv, data, path="/v1/completions", method="POST", headers=None):
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    return requests.request(method, srv.url + path, data=data, headers=h, timeout=60)


def test_malformed_requests(srv):
    cases = [
        (raw(srv, b"{not json"), 400, "invalid_json"),
        (raw(srv, b"[1, 2]"), 400, "invalid_json"),
        (raw(srv, b'{"prompt": "a"} trailing'), 400, "invalid_json"),
        (raw(srv, b'{"prompt": "\xff\xfe bad utf8"}'), 400, "invalid_utf8"),
        (raw(srv, b'{"prompt": "\xed\xa0\x80"}'), 400, "invalid_utf8"),  # an encoded surrogate
        (raw(srv, b"{}"), 400, None),
        (raw(srv, b'{"prompt": "x", "model": "gpt-4"}'), 404, "model_not_found"),
        (raw(srv, b"", path="/v1/nothing"), 404, "not_found"),
        (raw(srv, b"", path="/v1/completions", method="GET"), 405, "method_not_allowed"),
        (raw(srv, b"", path="/health", method="POST"), 405, "method_not_allowed"),
        (raw(srv, b'{"prompt": [1, 2, 99999]}'), 400, None),
        (raw(srv, b'{"prompt": "' + b"word " * 3000 + b'"}'), 400, "context_length_exceeded"),
        (raw(srv, b'{"prompt": ' + json.dumps([5] * 600).encode() + b"}"), 400, "context_length_exceeded"),
    ]
    for r, status, code in cases:
        assert r.status_code == status, (r.status_code, r.text)
        e = r.json()["error"]
        assert set(e) == {"message", "type", "param", "code"} and e["message"]
        if code:
            assert e["code"] == code, e
        srv.healthy()
    assert raw(srv, b"", path="/v1/completions", method="GET").headers["Allow"]


def test_fuzzed_bodies(srv):
    """Random corruptions of valid requests (fixed seed): every answer is a 200 or a JSON error, never a
    crash or a hang, and the server stays healthy."""
    import random
    rng = random.Random(1234)
    bases = [
        ("/v1/completions", {"prompt": "Once upon", "max_tokens": 3, "temperature": 0.5, "stop": ["x", "yz"],
                             "logit_bias": {"5": 1}, "seed": 3, "logprobs": 1}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi \u00e9"}], "max_tokens": 3,
                                  "stream": False, "top_logprobs": 1, "logprobs": True, "n": 2}),
        ("/tokenize", {"content": "hello", "with_pieces": True}),
        ("/detokenize", {"tokens": [5, 6, 7]}),
    ]
    junk = [None, True, -1, 0, 1e308, "", "x" * 50, [], {}, [1, "a"], {"a": [None]}, 2 ** 63]
    for i in range(300):
        path, base = rng.choice(bases)
        body = json.loads(json.dumps(base))
        kind = rng.randrange(3)
        if kind == 0:  # a field replaced by junk
            body[rng.choice([k for k in body if k != "max_tokens"])] = rng.choice(junk)
            data = json.dumps(body).encode()
        elif kind == 1:  # bytes flipped
            data = bytearray(json.dumps(body).encode())
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data)
        else:  # truncated
            data = json.dumps(body).encode()
            data = data[:rng.randrange(len(data))]
        r = raw(srv, data, path=path)
        assert r.status_code in (200, 400, 404), (data, r.status_code, r.text)
        if r.status_code != 200:
            e = r.json()["error"]
            assert set(e) == {"message", "type", "param", "code"}
    srv.healthy()


def test_oversized_body_413(srv):
    big = b'{"prompt": "' + b"a" * (5 << 20) + b'"}'
    r = raw(srv, big)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "body_too_large"
    srv.healthy()
    # also when the body comes chunked (no Content-Length)
    def gen():
        for _ in range(6):
            yield b"a" * (1 << 20)
    r = requests.post(srv.url + "/v1/completions", data=gen(), headers={"Content-Type": "application/json"},
                      timeout=60)
    assert r.status_code == 413
    srv.healthy()


def test_cors(srv):
    r = requests.options(srv.url + "/v1/chat/completions", headers={
        "Origin": "http://example.com", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"}, timeout=30)
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    assert "authorization" in r.headers["Access-Control-Allow-Headers"].lower()
    r = srv.post("/v1/completions", {"prompt": "Hi", "max_tokens": 1}, headers={"Origin": "http://example.com"})
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert srv.get("/nope").headers["Access-Control-Allow-Origin"] == "*"


def test_api_key():
    with tempfile.NamedTemporaryFile("w", suffix=".key", delete=False) as f:
        f.write("s3cret-key\n")
    s = Server("-c", "256", "--api-key-file", f.name, "--cors-origin", "https://app.example")
    try:
        body = {"prompt": "Hi", "max_tokens": 2}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"},
                        {"Authorization": "Bearer s3cret-ke"}, {"Authorization": "Bearer s3cret-key2"}):
            r = s.post("/v1/completions", body, headers=headers)
            assert r.status_code == 401, headers
            assert r.json()["error"]["code"] == "invalid_api_key"
            assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert s.get("/metrics").status_code == 401
        assert s.post("/tokenize", {"content": "x"}).status_code == 401
        assert s.get("/health").status_code == 200
        assert s.get("/v1/models").status_code == 200
        ok = {"Authorization": "Bearer s3cret-key"}
        assert s.post("/v1/completions", body, headers=ok).status_code == 200
        assert s.get("/metrics", headers=ok).status_code == 200
    finally:
        assert s.stop() == 0
        os.unlink(f.name)


def test_health_while_loading():
    """The server listens before the model is loaded: /health is 503 "loading" (and every other route
    a 503 JSON error) until it is ready. KVLM_SERVE_HOLD_LOAD holds the loading while its file exists."""
    with tempfile.NamedTemporaryFile(prefix="kvlm-hold-", delete=False) as f:
        hold = f.name
    s = Server("-c", "256", env={"KVLM_SERVE_HOLD_LOAD": hold}, wait_ready=False)
    try:
        for _ in range(3):
            r = s.get("/health")
            assert r.status_code == 503 and r.json() == {"status": "loading"}
            assert r.headers["Retry-After"] == "1"
        for path, body in (("/v1/completions", {"prompt": "Hi"}), ("/v1/chat/completions", {"messages": []}),
                           ("/tokenize", {"content": "x"})):
            r = s.post(path, body)
            assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading", r.text
        assert s.get("/v1/models").status_code == 503
        assert s.get("/metrics").status_code == 503
        assert "ready" not in s.stderr()
        os.unlink(hold)
        s.wait_ready()
        s.healthy()
        assert "kvlm serve: ready (model 'aidreams260K-f32.gguf'" in s.stderr()
    finally:
        if os.path.exists(hold):
            os.unlink(hold)
        assert s.stop() == 0


def test_per_ip_connection_limit():
    """--max-conn-per-ip N: an N+1th connection from the same address is closed without an answer;
    once one of them goes away, requests are served again."""
    s = Server("-c", "256", "--max-conn-per-ip", "3")
    held = []
    try:
        for _ in range(3):
            # the readiness probes' connections count until the server has seen them close, which
            # can take a moment on a busy machine: a held connection may be refused at first
            for attempt in range(100):
                c = socket.create_connection(("127.0.0.1", s.port), timeout=10)
                try:
                    c.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # keep-alive: it stays open
                    got = c.recv(4096)
                except ConnectionResetError:
                    got = b""
                if got:
                    break
                c.close()
                time.sleep(0.05)
            assert got.startswith(b"HTTP/1.1 200"), got
            held.append(c)
        extra = socket.create_connection(("127.0.0.1", s.port), timeout=10)
        try:
            extra.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            got = extra.recv(4096)
        except (ConnectionResetError, BrokenPipeError):
            got = b""
        assert got == b"", got  # refused: closed, no response
        extra.close()
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(s.url + "/health", timeout=10)
        held.pop().close()
        wait_for(lambda: probe_ok(s.url), "a connection slot to be free again")
        for c in held:  # the held ones still work
            c.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert c.recv(4096).startswith(b"HTTP/1.1 200")
    finally:
        for c in held:
            c.close()
        assert s.stop() == 0


def probe_ok(url):
    try:
        return requests.get(url + "/health", timeout=10).status_code == 200
    except requests.exceptions.ConnectionError:
        return False


# ------------------------------------------------------------ metrics, memory, shutdown

def test_metrics_names(srv):
    srv.post("/v1/completions", {"prompt": "Hi", "max_tokens": 3})
    m = srv.metrics()
    for name in ["requests_running", "requests_waiting", "prompt_tokens_total", "prompt_tokens_cached_total",
                 "generation_tokens_total", "time_to_first_token_seconds_count", "request_duration_seconds_count",
                 "kv_cache_usage_ratio", "kv_cache_tokens", "kv_cache_bytes", "prefix_cache_queries_total",
                 "prefix_cache_hits_total", "kv_evictions_total", "kv_compressions_total", "kv_growth_events_total",
                 "cancelled_total"]:
        assert "kvlm:" + name in m, name
    assert m['kvlm:requests_total{finish_reason="length"}'] >= 1
    assert m["kvlm:generation_tokens_total"] >= 3
    assert m['kvlm:time_to_first_token_seconds_bucket{le="+Inf"}'] == m["kvlm:time_to_first_token_seconds_count"]
    assert m["kvlm:kv_cache_bytes"] > 0
    assert "total_ms=" in srv.stderr() and "POST /v1/completions 200 prompt=" in srv.stderr()


def test_kv_endpoint_counts_known_actions():
    """GET /v1/kv on a fresh two-slot server: a 100-token prompt with n = 2 (choice 1 takes choice 0's
    three full pages from the pool, and both sessions then hold them), then a prompt sharing its first
    64 tokens: every counter moves by exactly what these requests did."""
    import random
    rng = random.Random(23)
    a = [1] + [rng.randrange(259, 512) for _ in range(99)]
    s = Server("-c", "512", "--parallel", "2")
    try:
        k0 = s.get("/v1/kv").json()
        assert k0["prefix_lookups"] == k0["prefix_hits"] == k0["generation_tokens"] == k0["tokens"] == 0
        assert k0["page_tokens"] == 32 and k0["n_ctx"] == 512 and k0["parallel"] == 2
        d = s.post("/v1/completions", {"prompt": a, "n": 2, "max_tokens": 4, "temperature": 0,
                                       "logit_bias": NO_EOS}).json()
        assert d["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        k1 = s.get("/v1/kv").json()
        assert k1["prefix_lookups"] == 200 and k1["prefix_hits"] == 96  # choice 1: pages 0..2 of choice 0
        assert k1["prefix_hit_rate"] == pytest.approx(96 / 200)
        assert k1["prompt_tokens"] == 100 and k1["prompt_tokens_cached"] == 0
        assert k1["generation_tokens"] == 8
        assert k1["pages_shared"] == 3  # both slots' sessions hold the three pages
        assert 0 < k1["tokens"] <= k1["capacity"]
        assert k1["bytes"] > 0 and k1["bytes"] == sum(k1["bytes_by_type"].values())
        assert k1["bytes_by_type"]["f16"] == k1["bytes"]  # the default K/V type
        assert k1["requests_running"] == k1["requests_waiting"] == k1["requests_prefilling"] == 0
        assert k1["evictions"] == k1["compressions"] == k1["cancelled"] == 0
        assert k1["growth_events"] >= 0 and k1["tokens_per_second"] >= 0
        assert k1["ttft_requests"] == 1 and k1["ttft_mean_s"] > 0
        b = a[:64] + [rng.randrange(259, 512) for _ in range(20)]
        e = s.post("/v1/completions", {"prompt": b, "max_tokens": 2, "temperature": 0, "logit_bias": NO_EOS}).json()
        assert e["usage"]["prompt_tokens_details"]["cached_tokens"] == 64
        k2 = s.get("/v1/kv").json()
        assert k2["prefix_lookups"] - k1["prefix_lookups"] == 84
        assert k2["prefix_hits"] - k1["prefix_hits"] == 64
        assert k2["prompt_tokens_cached"] - k1["prompt_tokens_cached"] == 64
        assert k2["generation_tokens"] - k1["generation_tokens"] == 2
        m = s.metrics()  # the same counters as /metrics
        assert m["kvlm:prefix_cache_hits_total"] == k2["prefix_hits"]
        assert m["kvlm:prefix_cache_queries_total"] == k2["prefix_lookups"]
        assert m["kvlm:kv_cache_bytes"] == k2["bytes"]
        assert "/v1/kv" not in s.stderr()  # polled every second by the page: not logged
    finally:
        assert s.stop() == 0


def test_web_page():
    s = Server("--api-key", "k1")
    off = Server("--no-webui")
    try:
        r = s.get("/")
        assert r.status_code == 200 and r.headers["Content-Type"] == "text/html; charset=utf-8"
        assert r.headers["Cache-Control"] == "no-cache" and r.headers["X-Content-Type-Options"] == "nosniff"
        csp = r.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe" not in csp
        assert '<script src="app.js"' in r.text and "<script>" not in r.text  # no inline script
        with open(os.path.join(os.path.dirname(__file__), "..", "..", "web", "index.html"), "rb") as f:
            assert r.content == f.read()  # the file as it is in web/
        assert s.get("/index.html").content == r.content
        js = s.get("/app.js")
        assert js.status_code == 200 and js.headers["Content-Type"] == "text/javascript; charset=utf-8"
        assert "Content-Security-Policy" in js.headers
        css = s.get("/style.css")
        assert css.status_code == 200 and css.headers["Content-Type"] == "text/css; charset=utf-8"
        assert s.get("/nope.js").status_code == 404 and s.post("/", {}).status_code == 405
        # the page is open; what it fetches asks for the key
        assert s.get("/v1/kv").status_code == 401
        assert s.get("/v1/kv", headers={"Authorization": "Bearer k1"}).status_code == 200
        # --no-webui: the page's files are 404, the API unchanged
        for path in ("/", "/index.html", "/app.js", "/style.css"):
            assert off.get(path).status_code == 404, path
        assert off.get("/v1/kv").status_code == 200 and off.get("/health").status_code == 200
    finally:
        assert s.stop() == 0 and off.stop() == 0


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_memory_flat_over_1000_requests(srv):
    sess = requests.Session()
    def one(i):
        r = sess.post(srv.url + "/v1/completions", json={"prompt": "Req %d" % (i % 50), "max_tokens": 4,
                                                         "temperature": 0.5, "seed": i}, timeout=60)
        assert r.status_code == 200
    for i in range(150):
        one(i)
    before = rss_kb(srv.proc.pid)
    for i in range(1000):
        one(i)
    after = rss_kb(srv.proc.pid)
    assert after <= before * 1.10, (before, after)


def test_graceful_shutdown():
    s = Server("-c", "4096", "--parallel", "2", "--shutdown-grace", "1", model=SLOW_MODEL)
    body = {"prompt": "Forever", "max_tokens": 1000000, "temperature": 0, "logit_bias": NO_EOS, "stream": True}
    out = {}

    def client():
        with requests.post(s.url + "/v1/completions", json=body, stream=True, timeout=60) as r:
            out["events"] = sse_events(r)

    t = threading.Thread(target=client)
    t.start()
    wait_for(lambda: s.metrics()["kvlm:requests_running"] == 1, "the request to run")
    t0 = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    rc = s.proc.wait(timeout=15)
    elapsed = time.monotonic() - t0
    t.join()
    assert rc == 0
    assert elapsed < 10
    evs = out["events"]
    assert evs[-1] == "[DONE]"
    last = json.loads(evs[-2])
    assert last["choices"][0]["finish_reason"] == "cancelled"
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(s.url + "/health", timeout=5)
    log = s.stderr()
    assert "shutting down" in log and "stopped" in log
    os.unlink(s.log.name)
