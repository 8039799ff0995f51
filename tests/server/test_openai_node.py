"""kvlm serve with the official OpenAI client for Node.js (the `openai` npm package).

The package is pinned by tests/server/openai-node/package-lock.json and installed at test time with
`npm ci` into the build directory (<build>/openai-node, next to bin/kvlm), never into the source
tree. scripts/deps.sh (test mode) installs Node.js and npm where they are missing. If the client
cannot be installed this test fails and says why: it is not skipped.
"""
import os
import shutil
import subprocess

from test_server import BIN, Server

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "openai-node")
FILES = ("package.json", "package-lock.json", "client.test.mjs")


def install_dir():
    # KVLM_BIN is <build>/bin/kvlm
    build = os.path.dirname(os.path.dirname(os.path.abspath(BIN)))
    return os.path.join(build, "openai-node")


def install():
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "node and npm are needed for the OpenAI client test (scripts/deps.sh test installs them)"
    d = install_dir()
    os.makedirs(d, exist_ok=True)
    for f in FILES:
        shutil.copyfile(os.path.join(SRC, f), os.path.join(d, f))
    r = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=d, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, "npm ci of the pinned openai package failed in %s:\n%s%s" % (d, r.stdout, r.stderr)
    assert os.path.isfile(os.path.join(d, "node_modules", "openai", "package.json")), "npm ci did not install openai"
    return node, d


def test_official_openai_node_client():
    node, d = install()
    s = Server("-c", "512", "--parallel", "2", "--api-key", "sdk-test-key", "--alias", "kvlm-test-model")
    try:
        env = dict(os.environ, KVLM_URL=s.url, KVLM_KEY="sdk-test-key", KVLM_MODEL_ID="kvlm-test-model")
        r = subprocess.run([node, "--test", "--test-reporter=spec", "client.test.mjs"], cwd=d, env=env,
                           capture_output=True, text=True, timeout=300)
        out = r.stdout + r.stderr
        assert r.returncode == 0, "the OpenAI client test failed:\n" + out
        # every test of the file ran and passed (node's runner prints the counts)
        assert "\u2139 tests 6" in out and "\u2139 pass 6" in out and "\u2139 fail 0" in out, out
    finally:
        assert s.stop() == 0
