"""The chat page the ingress serves: self-contained, open without a key, and driven in headless Chromium against the
shared deployed app (tests/services/conftest.py), whose API calls need the key."""

from __future__ import annotations

import io
import os
import re

import httpx
import pytest

from services import chat_page
from services.auth import Guard, digest

CHROMIUM = "/usr/bin/chromium"
KEY = "sk-page-test"


def test_page_is_self_contained_and_knows_its_prefix():
    html = chat_page.render("/tiny/")
    assert 'const BASE = "/tiny";' in html
    assert chat_page.render().count('const BASE = "";') == 1
    # No CDN, font or image from elsewhere: every URL the page can reach is built from BASE.
    assert not re.search(r"https?://|\bsrc=|\bhref=|@import|url\(", html)
    assert 'BASE + "/v1/models"' in html and 'BASE + "/v1/chat/completions"' in html
    assert '"</script>"' not in chat_page.render('"</script>')  # a prefix cannot close the script element


def test_guard_opens_the_page_but_not_the_api():
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from services import ingress

    async def page(request):
        return HTMLResponse("page")

    async def models(request):
        return JSONResponse({"data": []})

    routes = [Route(p, page, methods=["GET", "POST"]) for p in chat_page.PATHS] + [Route("/v1/models", models)]
    app = Starlette(routes=routes)
    guard = Guard(key_digests=(digest(KEY),))
    app.add_middleware(ingress.GuardMiddleware, guard=lambda: guard)
    client = TestClient(app)
    assert [client.get(p).status_code for p in chat_page.PATHS] == [200, 200]
    assert client.post("/chat").status_code == 401  # only reading the page is open
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


# ---- in the browser, against the deployed app ------------------------------------------------------------------

# Runs in the page: no key, a wrong key, the right key (models load), a streamed answer, then a chat request with a
# wrong key. Text snapshots of the answer bubble, taken on every DOM change, show the tokens arriving one by one.
DRIVE = """(async () => {
  const $ = (id) => document.getElementById(id);
  const until = async (test, what) => {
    for (let i = 0; i < 600; i++) { if (test()) return; await new Promise((r) => setTimeout(r, 50)); }
    throw new Error("timed out waiting for " + what);
  };
  const setKey = (key, announce) => {
    $("key").value = key;
    if (announce) $("key").dispatchEvent(new Event("change"));
  };
  const ask = async (question) => {
    $("prompt").value = question;
    $("ask").requestSubmit();
    await until(() => !$("send").disabled, "the reply to end");
  };
  const seen = {};
  await until(() => $("error").textContent, "the missing-key error");
  seen.noKey = $("error").textContent;
  setKey("wrong-key", true);
  await until(() => $("error").textContent.includes("Invalid"), "the wrong-key error");
  seen.wrongKey = $("error").textContent;
  setKey(KEY, true);
  await until(() => $("model").options.length && $("model").options[0].value, "the model list");
  seen.models = [...$("model").options].map((o) => o.value);
  seen.errorAfterKey = $("error").textContent;
  $("model").value = seen.models[0];

  const snapshots = [];
  new MutationObserver(() => {
    const out = document.querySelector(".assistant");
    if (out) snapshots.push(out.textContent);
  }).observe($("log"), {childList: true, subtree: true, characterData: true});
  await ask("What does a Ray cluster do?");
  seen.snapshots = snapshots;
  seen.answer = document.querySelector(".assistant").textContent;
  seen.errorAfterAnswer = $("error").textContent;

  setKey("wrong-key", false);
  await ask("And a second question?");
  seen.chatWrongKey = $("error").textContent;
  seen.bubbles = [...document.querySelectorAll(".msg")].map((m) => m.className);
  return seen;
})()"""


@pytest.mark.slow
@pytest.mark.cluster
def test_chat_page_streams_an_answer_in_chromium(served_app, tmp_path):
    from PIL import Image

    from tests.observability.chromium import open_page

    if not os.path.exists(CHROMIUM):
        pytest.fail("Debian's chromium is not installed: apt-get install -y --no-install-recommends chromium")
    for path in chat_page.PATHS:  # the page itself needs no key
        resp = httpx.get(served_app.base_url + path, timeout=30)
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
        assert "<title>llmctl chat</title>" in resp.text

    page = open_page(served_app.base_url + "/chat", DRIVE.replace("KEY", repr(served_app.api_key)), timeout=120)
    seen = page.evaluated
    assert isinstance(seen, dict), page.errors  # None: the script threw; Chromium's message is in page.errors
    assert seen["noKey"] == (
        "Not authorized (401): Missing API key: send `Authorization: Bearer <key>`. Enter the endpoint's API key above."
    )
    assert seen["wrongKey"] == "Not authorized (401): Invalid API key. Check the API key above."
    assert seen["models"] == [served_app.name] and seen["errorAfterKey"] == ""

    answer, snapshots = seen["answer"], [s for s in seen["snapshots"] if s]
    assert answer and seen["errorAfterAnswer"] == ""
    assert len(set(snapshots)) >= 3, snapshots  # the bubble grew several times while the reply streamed
    assert all(answer.startswith(s) for s in snapshots), "each update extends the text shown before"
    assert seen["chatWrongKey"] == "Not authorized (401): Invalid API key. Check the API key above."
    assert seen["bubbles"] == ["msg user", "msg assistant", "msg user"]  # the refused question got no answer bubble

    # Nothing beyond the app's own routes, but the icon the browser asks of the origin (the gateway answers it).
    own = [u for u in page.requests if not u.endswith("/favicon.ico")]
    assert own and all(u.startswith(served_app.base_url) for u in own), page.requests
    # Chromium logs each refused fetch as "Failed to load resource: … 401"; anything else is a page error.
    assert [e for e in page.errors if "401" not in e] == [], page.errors

    (tmp_path / "chat.png").write_bytes(page.screenshot)
    print(f"screenshot: {tmp_path / 'chat.png'}")
    shot = Image.open(io.BytesIO(page.screenshot)).convert("RGB")
    colors = shot.getcolors(maxcolors=1 << 20)
    assert len(colors) > 50, "the screenshot is blank"
    # The user's bubbles (#3b6ea8) and the header bar (#20324a) are on screen.
    assert sum(n for n, px in colors if px == (0x3B, 0x6E, 0xA8)) > 2000
    assert sum(n for n, px in colors if px == (0x20, 0x32, 0x4A)) > 10_000
