"""Fixtures of the dataset-run tests: a manifest of grounded-shapes scenes
with bad records among them, the one-process reference run of it, and a
real headless Chromium driven over the DevTools protocol (pipe transport:
no websocket library needed)."""
import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time

import numpy as np
import pytest
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
#: Ids of the good records of the manifest (the bad ones are written in run_manifest).
GOOD = ["s0", "s1", "s2", "s3", "gen4", "s5", "dict6", "s7"]


def _scene(i):
    from dcam.zoo.data import ShapesDataset

    return ShapesDataset(split="test", size=i + 1, image_size=64, cache=False)[i]


@pytest.fixture(scope="session")
def run_manifest(tmp_path_factory):
    """manifest.jsonl (13 records: 8 good, 5 bad, interleaved) and what each good line holds."""
    d = tmp_path_factory.mktemp("manifest")
    (d / "img").mkdir()
    (d / "mask").mkdir()
    lines, expect = [], {}

    def scene(i, rid):
        s = _scene(i)
        s.image.save(d / "img" / f"{rid}.png")
        Image.fromarray(s.mask.astype(np.uint8), mode="L").save(d / "mask" / f"{rid}.png")
        return s

    for k, rid in enumerate(GOOD):
        s = scene(k, rid)
        e = {"id": rid, "image": f"img/{rid}.png"}
        if rid == "dict6":  # labels as {word: label}
            once = {w: int(lab) for w, lab in zip(s.words, s.word_labels) if lab and s.words.count(w) == 1}
            e.update(response=s.caption, mask=f"mask/{rid}.png", labels=once)
        elif rid != "gen4":  # gen4: the model writes the response, no metrics
            e.update(response=s.caption, mask=f"mask/{rid}.png", labels=[int(v) for v in s.word_labels])
        if rid == "s3":  # two words only
            e["targets"] = [s.words[1], s.words[2]]
        if rid == "s5":
            e["prompt"] = "describe the image"
        lines.append(e)
        expect[rid] = e
    s = scene(8, "bad-mask")
    Image.fromarray(np.zeros((32, 32), np.uint8), mode="L").save(d / "mask" / "bad-mask.png")
    (d / "img" / "corrupt-image.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    missing = [w for w in ("circle", "square", "triangle") if w not in s.words][0]
    bad = [{"id": "missing-image", "image": "img/nowhere.png"},
           {"id": "corrupt-image", "image": "img/corrupt-image.png"},
           {"id": "bad-mask", "image": "img/bad-mask.png", "response": s.caption, "mask": "mask/bad-mask.png",
            "labels": [int(v) for v in s.word_labels]},
           {"id": "bad-target", "image": "img/bad-mask.png", "response": s.caption, "targets": [missing]},
           {"id": "bad-label-word", "image": "img/bad-mask.png", "response": s.caption, "mask": "mask/s0.png",
            "labels": {missing: 1}}]
    order = lines[:2] + bad[:2] + lines[2:5] + bad[2:4] + lines[5:] + bad[4:]
    path = d / "manifest.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in order))
    return {"path": str(path), "folder": str(d), "good": expect, "order": [e["id"] for e in order]}


#: Options of every run of the manifest in these tests.
RUN_ARGS = ["--threads", "1", "--batch-size", "2", "--shard-size", "2", "--quiet"]


@pytest.fixture(scope="session")
def reference_run(run_manifest, tmp_path_factory):
    """The manifest run on one process (in this process, through the CLI)."""
    from dcam.cli import main

    out = str(tmp_path_factory.mktemp("ref") / "run")
    rc = main(["run", run_manifest["path"], "--out", out, *RUN_ARGS])
    assert rc == 0
    return out


# ------------------------------------------------------------------ headless Chromium

class Chromium:
    """A headless Chromium and one tab, over the DevTools protocol on a pipe
    (``--remote-debugging-pipe``: JSON messages separated by NUL bytes, the
    browser reading fd 3 and writing fd 4)."""

    def __init__(self, exe: str = CHROMIUM):
        cmd_r, self.w = os.pipe()
        self.r, res_w = os.pipe()
        self.profile = tempfile.mkdtemp(prefix="dcam-chromium-")
        args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={self.profile}", "--remote-debugging-pipe", "--window-size=1280,900",
                "about:blank"]

        def fds():  # in the child: the pipe ends onto fds 3 and 4 (via high numbers, so none is clobbered)
            os.dup2(cmd_r, 200)
            os.dup2(res_w, 201)
            os.dup2(200, 3)
            os.dup2(201, 4)

        self.proc = subprocess.Popen(args, preexec_fn=fds, close_fds=False, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(res_w)
        self.buf, self.next_id, self.events, self.session = b"", 0, [], None

    def _read(self, timeout: float):
        end = time.time() + timeout
        while b"\0" not in self.buf:
            left = end - time.time()
            if left <= 0:
                raise TimeoutError("no message from Chromium")
            if select.select([self.r], [], [], left)[0]:
                chunk = os.read(self.r, 1 << 20)
                if not chunk:
                    raise EOFError("Chromium closed the pipe")
                self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method, params=None, browser=False, timeout=30.0):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if not browser:
            msg["sessionId"] = self.session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        while True:
            m = self._read(timeout)
            if m.get("id") == msg["id"]:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def drain(self, seconds=0.2):
        try:
            while True:
                self.events.append(self._read(seconds))
        except TimeoutError:
            pass

    def open(self, url: str):
        """A fresh tab at ``url`` (events cleared), after its load event and a settle time for page scripts."""
        if self.session is not None:
            self.send("Target.closeTarget", {"targetId": self.target}, browser=True)
        self.target = self.send("Target.createTarget", {"url": "about:blank"}, browser=True)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": self.target, "flatten": True},
                                 browser=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.events = []
        self.send("Page.navigate", {"url": url})
        end = time.time() + 30
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            if time.time() > end:
                raise TimeoutError(f"{url} did not load")
            self.events.append(self._read(30))
        self.drain(0.5)

    def js(self, expression: str):
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def canvas(self, selector: str = "canvas.ov") -> np.ndarray:
        """The RGBA pixels of the first canvas matching ``selector``, as the page drew them ``[H, W, 4]``."""
        data = self.js(f"(function(){{var c=document.querySelector({json.dumps(selector)});"
                       "return [c.width,c.height,Array.from(c.getContext('2d').getImageData(0,0,c.width,c.height)"
                       ".data)];})()")
        return np.asarray(data[2], np.uint8).reshape(data[1], data[0], 4)

    def click(self, selector: str, kind: str = "click"):
        """A real mouse click (or ``"hover"``: a move onto it) at the centre of the element."""
        box = self.js(f"(function(){{var r=document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
                      "return [r.left+r.width/2, r.top+r.height/2];})()")
        self.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": box[0], "y": box[1]})
        if kind == "click":
            for t in ("mousePressed", "mouseReleased"):
                self.send("Input.dispatchMouseEvent", {"type": t, "x": box[0], "y": box[1], "button": "left",
                                                       "clickCount": 1})
        self.drain(0.1)

    def key(self, key: str, code: str = None, keycode: int = 0):
        for t in ("keyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", {"type": t, "key": key, "code": code or key,
                                                 "windowsVirtualKeyCode": keycode,
                                                 **({"text": key} if len(key) == 1 and t == "keyDown" else {})})
        self.drain(0.3)

    def screenshot(self) -> np.ndarray:
        import io

        data = base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    def problems(self):
        """Console errors, uncaught exceptions, error log entries and requests that left the machine."""
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(f"console.{p['type']}: {p.get('args')}")
            elif m == "Runtime.exceptionThrown":
                out.append(f"exception: {p.get('exceptionDetails')}")
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
            elif m == "Network.requestWillBeSent" and not p["request"]["url"].startswith(("file:", "data:",
                                                                                        "about:", "blob:")):
                out.append(f"network: {p['request']['url']}")
            elif m == "Network.loadingFailed":
                out.append(f"failed load: {p}")
        return out

    def close(self):
        self.proc.kill()
        self.proc.wait()
        os.close(self.w)
        os.close(self.r)
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="session")
def chromium_exe():
    """Debian's chromium, installed with apt-get when missing (skipped, with the reason, only if that fails)."""
    if not os.path.exists(CHROMIUM):
        try:
            proc = subprocess.run(["apt-get", "install", "-y", "chromium"], capture_output=True, text=True,
                                  timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"chromium is not installed and `apt-get install -y chromium` could not run: {exc}")
        if proc.returncode != 0 or not os.path.exists(CHROMIUM):
            pytest.skip("chromium is not installed and `apt-get install -y chromium` failed: "
                        + (proc.stderr or proc.stdout).strip().splitlines()[-1:][0] if (proc.stderr or proc.stdout)
                        else "no output")
    return CHROMIUM


@pytest.fixture(scope="session")
def browser(chromium_exe):
    b = Chromium(chromium_exe)
    yield b
    b.close()
