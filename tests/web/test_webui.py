"""kvlm serve's web page in a real browser: Debian's headless chromium driven through chromedriver's
WebDriver HTTP API (requests only; no selenium). Run by ctest `webui` with /usr/bin/python3 -m pytest;
scripts/deps.sh webtest installs chromium and chromium-driver (the fixture runs it when they are
missing, and fails saying so when they still are). Screenshots of every state go to KVLM_WEBUI_OUT
(the build directory's webui/).

The tests run in file order on one server (with an API key) and one browser."""
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import requests

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "server"))
from test_server import MODELS, Server, wait_for  # noqa: E402

MODEL = os.path.join(MODELS, "llama", "synth15M-q8_0.gguf")
CHROMIUM = os.environ.get("KVLM_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("KVLM_CHROMEDRIVER", "/usr/bin/chromedriver")
OUT = os.environ.get("KVLM_WEBUI_OUT", os.path.join(tempfile.gettempdir(), "kvlm-webui"))
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
KEY = "webui-test-key"
SHORT = 24     # max_tokens of the short answers
SLOW = 240     # seconds an answer may take (an ASan build on a busy machine is slow)
# long enough for several full KV pages (32 tokens each) shared by every conversation that starts with it
SYSTEM = ("You are a patient storyteller. You tell short, gentle stories about animals who live in the forest, "
          "the river and the mountains: foxes, owls, otters, bears and small birds. Every story has a beginning, "
          "a middle and an end, uses simple words a child knows, and ends with the animals being kind to each "
          "other. You never write anything frightening, and you keep each answer to a few short paragraphs. "
          "When you are asked a question, you answer it with a story.")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Browser:
    """A chromium session through chromedriver's W3C WebDriver endpoints."""

    def __init__(self):
        self.log = tempfile.NamedTemporaryFile(prefix="chromedriver-", suffix=".log", delete=False)
        port = free_port()
        self.proc = subprocess.Popen([CHROMEDRIVER, "--port=%d" % port], stdout=self.log, stderr=subprocess.STDOUT)
        self.base = "http://127.0.0.1:%d" % port
        wait_for(self._up, "chromedriver to start")
        self.profile = tempfile.mkdtemp(prefix="kvlm-webui-profile-")
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--no-first-run", "--disable-extensions",
                "--user-data-dir=" + self.profile]},
            "goog:loggingPrefs": {"browser": "ALL"}}}}
        r = requests.post(self.base + "/session", json=caps, timeout=60)
        assert r.status_code == 200, r.text
        self.sid = r.json()["value"]["sessionId"]
        self.url = self.base + "/session/" + self.sid

    def _up(self):
        try:
            return requests.get(self.base + "/status", timeout=2).json()["value"]["ready"]
        except (requests.exceptions.ConnectionError, ValueError, KeyError):
            return False

    def cmd(self, method, path, body=None):
        r = requests.request(method, self.url + path, json=body if body is not None else {} if method == "POST"
                             else None, timeout=60)
        v = r.json()["value"]
        assert r.status_code == 200, "%s %s: %s" % (method, path, json.dumps(v)[:2000])
        return v

    def open(self, url):
        self.cmd("POST", "/url", {"url": url})

    def js(self, script, *args):
        return self.cmd("POST", "/execute/sync", {"script": script, "args": list(args)})

    def find(self, css):
        v = self.cmd("POST", "/element", {"using": "css selector", "value": css})
        return next(iter(v.values()))

    def click(self, css):
        self.cmd("POST", "/element/%s/click" % self.find(css))

    def type(self, css, text):
        e = self.find(css)
        self.cmd("POST", "/element/%s/clear" % e)
        self.cmd("POST", "/element/%s/value" % e, {"text": text})

    def screenshot(self, name):
        os.makedirs(OUT, exist_ok=True)
        png = base64.b64decode(self.cmd("GET", "/screenshot"))
        with open(os.path.join(OUT, name + ".png"), "wb") as f:
            f.write(png)

    def wait(self, script, what, timeout=30, *args):
        wait_for(lambda: self.js(script, *args), what, timeout)

    def close(self):
        try:
            requests.delete(self.url, timeout=30)
        finally:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            shutil.rmtree(self.profile, ignore_errors=True)
            os.unlink(self.log.name)


def ensure_browser():
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        subprocess.run(["bash", os.path.join(ROOT, "scripts", "deps.sh"), "webtest"], check=False)
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.fail("the web page test needs %s and %s: install Debian's chromium and chromium-driver "
                    "(scripts/deps.sh webtest)" % (CHROMIUM, CHROMEDRIVER))


@pytest.fixture(scope="module")
def env():
    ensure_browser()
    srv = Server("-c", "2048", "--parallel", "2", "--api-key", KEY, model=MODEL)
    b = Browser()
    try:
        yield srv, b
    finally:
        b.close()
        assert srv.stop() == 0


def auth():
    return {"Authorization": "Bearer " + KEY}


def kv(srv):
    r = srv.get("/v1/kv", headers=auth())
    assert r.status_code == 200
    return r.json()


def stored(b):
    return b.js("return JSON.parse(localStorage.getItem('kvlm.conversations') || '[]')")


def idle(b):
    return "return document.getElementById('stop').disabled && !document.getElementById('send').disabled"


def set_settings(b, temperature, max_tokens):
    b.type("#temperature", str(temperature))
    b.type("#max_tokens", str(max_tokens))


def send(b, text):
    b.type("#input", text)
    b.click("#send")


# ------------------------------------------------------------ the scenarios, in order

def test_asks_for_the_api_key(env):
    srv, b = env
    b.open(srv.url + "/")
    # the KV panel's first poll gets a 401: the page asks for the key
    b.wait("return document.getElementById('key-dialog').open", "the API key dialog")
    b.screenshot("01-api-key")
    b.type("#key-input", KEY)
    b.click("#key-save")
    b.wait("return !document.getElementById('key-dialog').open", "the dialog to close")
    assert b.js("return localStorage.getItem('kvlm.apiKey')") == KEY
    b.wait("return document.getElementById('status').textContent === 'ready'", "the panel to be fed")
    b.wait("return document.getElementById('model').textContent === 'synth15M-q8_0.gguf'", "the model's name")


def test_streamed_answer_appears_incrementally(env):
    srv, b = env
    b.type("#system", SYSTEM)
    set_settings(b, 0, SHORT)
    # record the answer's length at every change of the page (a MutationObserver on the messages)
    b.js("""window.__lens = [];
            const box = document.getElementById('messages');
            new MutationObserver(() => {
              const m = box.querySelectorAll('.msg.assistant .body');
              if (m.length) window.__lens.push(m[m.length - 1].textContent.length);
            }).observe(box, {childList: true, subtree: true, characterData: true});""")
    send(b, "Tell me about a fox.")
    b.wait(idle(b), "the answer to finish", SLOW)
    lens = b.js("return window.__lens")
    growing = sorted(set(x for x in lens if x > 0))
    assert len(growing) >= 3, "the text did not arrive in several steps: %s" % lens
    final = b.js("const m = document.querySelectorAll('.msg.assistant .body'); return m[m.length - 1].textContent")
    assert lens[-1] == len(final) > 0
    convs = stored(b)
    assert len(convs) == 1 and convs[0]["system"] == SYSTEM
    msgs = convs[0]["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant"]
    answer = msgs[1]["content"]
    assert answer and msgs[1]["usage"]["completion_tokens"] >= 1
    # the same request outside the browser gives the same text (temperature 0)
    r = srv.post("/v1/chat/completions", {
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Tell me about a fox."}],
        "temperature": 0, "max_tokens": SHORT, "top_p": 0.95}, headers=auth())
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == answer
    b.screenshot("02-streamed")


def test_second_conversation_same_system_prompt_hits_the_cache(env):
    srv, b = env
    before = kv(srv)
    b.wait("return document.getElementById('kv-hit-rate').dataset.value !== undefined", "the panel")
    rate0 = float(b.js("return document.getElementById('kv-hit-rate').dataset.value"))
    b.click("#new-chat")
    assert b.js("return document.getElementById('system').value") == SYSTEM  # a new one keeps the system prompt
    send(b, "And an owl?")
    b.wait(idle(b), "the answer to finish", SLOW)
    after = kv(srv)
    last = b.js("const e = document.getElementById('last-cached'); return [e.dataset.cached, e.dataset.prompt]")
    cached, prompt = int(last[0]), int(last[1])
    assert cached >= 64  # the system prompt's full pages came from the first conversation
    assert after["prefix_hits"] - before["prefix_hits"] == cached
    assert after["prefix_lookups"] - before["prefix_lookups"] == prompt
    # the panel (polled every second) shows the hit rate rising
    b.wait("return parseFloat(document.getElementById('kv-hit-rate').dataset.value) > %r" % rate0,
           "the panel's hit rate to rise", 30)
    assert len(stored(b)) == 2
    b.screenshot("03-second-conversation")


def test_regenerate(env):
    srv, b = env
    first = stored(b)[0]["messages"]
    n0 = kv(srv)["ttft_requests"]
    b.click("#regenerate")
    wait_for(lambda: kv(srv)["ttft_requests"] == n0 + 1, "the regenerated request", SLOW)
    b.wait(idle(b), "the regeneration to finish", SLOW)
    again = stored(b)[0]["messages"]
    assert len(again) == len(first) == 2
    assert again[1]["content"] == first[1]["content"]  # temperature 0: the same answer


def test_stop_a_long_answer(env):
    srv, b = env
    cancelled0 = srv.metrics(headers=auth())["kvlm:cancelled_total"]
    set_settings(b, 0, 1500)
    send(b, "Now tell me a very long story about the river.")
    b.wait("const m = document.querySelectorAll('.msg.assistant .body');"
           "return m.length >= 2 && m[m.length - 1].textContent.length > 40", "the answer to start", SLOW)
    b.click("#stop")
    b.wait(idle(b), "the page to stop", 30)
    wait_for(lambda: srv.metrics(headers=auth())["kvlm:cancelled_total"] == cancelled0 + 1,
             "the server to cancel the request", 30)
    m = srv.metrics(headers=auth())
    assert m["kvlm:requests_running"] == 0
    msg = stored(b)[0]["messages"][-1]
    assert msg["stopped"] is True and 0 < len(msg["content"])
    assert "usage" not in msg  # it ended before the usage chunk
    b.wait("return document.getElementById('kv-cancelled').dataset.value === '%d'" % (cancelled0 + 1),
           "the panel's cancelled count", 30)
    assert "stopped" in b.js("const m = document.querySelectorAll('.msg.assistant .meta');"
                             "return m[m.length - 1].textContent")
    b.screenshot("04-stopped")
    set_settings(b, 0, SHORT)


def test_reload_keeps_the_conversations(env):
    srv, b = env
    convs = stored(b)
    titles = b.js("return [...document.querySelectorAll('#conversations .title')].map(e => e.textContent)")
    shown = b.js("return [...document.querySelectorAll('#messages .msg')].map(e => e.className)")
    b.cmd("POST", "/refresh")
    b.wait("return document.querySelectorAll('#conversations li').length === %d" % len(convs), "the list", 10)
    assert stored(b) == convs
    assert b.js("return [...document.querySelectorAll('#conversations .title')].map(e => e.textContent)") == titles
    assert b.js("return [...document.querySelectorAll('#messages .msg')].map(e => e.className)") == shown
    assert not b.js("return document.getElementById('key-dialog').open")  # the key was kept
    b.wait("return document.getElementById('status').textContent === 'ready'", "the panel after reload")
    b.screenshot("05-reloaded")


def test_answer_with_markup_renders_as_text(env):
    srv, b = env
    payload = ("Here is <script>window.__xss = 1</script> and <img src=x onerror=\"window.__xss = 2\"> "
               "and <b>bold tag</b>.\n\n**real bold**, *italic*, `<i>code</i>`\n\n- one <svg onload=alert(1)>\n"
               "- two\n\n```\n<script>window.__xss = 3</script>\n```")
    conv = {"id": "xss", "title": "<img src=x onerror=window.__xss=4>", "system": "", "created": 1,
            "messages": [{"role": "user", "content": "<script>window.__xss = 5</script>"},
                         {"role": "assistant", "content": payload}]}
    b.js("localStorage.setItem('kvlm.conversations', JSON.stringify([arguments[0]]));"
         "localStorage.setItem('kvlm.current', JSON.stringify('xss'));", conv)
    b.cmd("POST", "/refresh")
    b.wait("return document.querySelectorAll('#messages .msg').length === 2", "the stored conversation", 10)
    # nothing of the payload became an element; all of it is text
    assert b.js("return document.querySelectorAll('#messages script, #messages img, #messages svg, #messages b,"
                " #messages i, #conversations img').length") == 0
    assert b.js("return window.__xss === undefined")
    body = b.js("return document.querySelectorAll('.msg.assistant .body')[0].textContent")
    assert "<script>window.__xss = 1</script>" in body and "<img src=x onerror=" in body
    assert b.js("return document.querySelector('#conversations .title').textContent") == conv["title"]
    assert "<script>" in b.js("return document.querySelector('.msg.user .body').textContent")
    # the Markdown subset did apply
    assert b.js("return document.querySelector('.msg.assistant strong').textContent") == "real bold"
    assert b.js("return document.querySelector('.msg.assistant em').textContent") == "italic"
    assert b.js("return document.querySelector('.msg.assistant p code').textContent") == "<i>code</i>"
    assert b.js("return document.querySelectorAll('.msg.assistant ul li').length") == 2
    assert b.js("return document.querySelector('.msg.assistant pre code').textContent") == \
        "<script>window.__xss = 3</script>"
    b.screenshot("06-markup-as-text")


def test_relative_urls_only(env):
    """Every request the page made went to its own server by a relative URL (so it works behind a
    proxy), and the files carry the security headers."""
    srv, b = env
    urls = b.js("return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls and all(u.startswith(srv.url + "/") for u in urls), urls
    src = open(os.path.join(ROOT, "web", "app.js")).read()
    assert "fetch('/" not in src and "http://" not in src and "https://" not in src
