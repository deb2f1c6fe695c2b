#!/usr/bin/env python3
"""Drives headless Chromium over the DevTools protocol, for the live view's
test (tests/live_view.rs). Standard library only: a minimal websocket client
(RFC 6455 handshake, masked text frames) is enough for CDP.

Usage: cdp.py PORT SCRIPT_JSON
  PORT: the browser's --remote-debugging-port.
  SCRIPT_JSON: a list of steps, each one of
    {"goto": URL}
    {"wait": JS_EXPR, "timeout": SECONDS}   poll until the expression is truthy
    {"eval": JS_EXPR}                        e.g. a click (a script's: untrusted)
    {"click": CSS_SELECTOR}                  a person's click (trusted mouse events)
    {"expect": JS_EXPR}                      fail unless the expression is truthy now
    {"screenshot": PATH}
Exits 0 when every step succeeded; prints the failing step and the page's
text otherwise. Waits are on DOM conditions, polled every 100 ms.
"""
import base64, json, os, socket, struct, sys, time, urllib.request


class Socket:
    def __init__(self, url):
        assert url.startswith("ws://")
        hostport, path = url[5:].split("/", 1)
        host, port = hostport.split(":")
        self.s = socket.create_connection((host, int(port)), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.s.sendall((f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n"
                        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                        "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.s.recv(1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise RuntimeError("websocket handshake refused: " + head.decode(errors="replace"))
        self.next_id = 0

    def send(self, text):
        data = text.encode()
        mask = os.urandom(4)
        n = len(data)
        header = bytes([0x81])
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 65536:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", n)
        self.s.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.s.recv(n - len(buf))
            if not chunk:
                raise RuntimeError("browser closed the connection")
            buf += chunk
        return buf

    def recv(self):
        message = b""
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._exact(8))[0]
            message += self._exact(n)
            if b0 & 0x80:
                return message.decode()

    def call(self, method, **params):
        self.next_id += 1
        me = self.next_id
        self.send(json.dumps({"id": me, "method": method, "params": params}))
        while True:
            answer = json.loads(self.recv())
            if answer.get("id") == me:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})


def evaluate(ws, expr):
    r = ws.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
    if "exceptionDetails" in r:
        raise RuntimeError(f"{expr}: {r['exceptionDetails'].get('text')}")
    return r.get("result", {}).get("value")


def main():
    port, script = sys.argv[1], json.loads(sys.argv[2])
    deadline = time.time() + 30
    while True:
        try:
            pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2))
            page = next(p for p in pages if p.get("type") == "page")
            break
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.1)
    ws = Socket(page["webSocketDebuggerUrl"])
    ws.call("Emulation.setDeviceMetricsOverride", width=1400, height=900, deviceScaleFactor=1, mobile=False)
    for step in script:
        if "goto" in step:
            ws.call("Page.navigate", url=step["goto"])
        elif "wait" in step:
            end = time.time() + step.get("timeout", 20)
            while True:
                try:
                    if evaluate(ws, step["wait"]):
                        break
                except RuntimeError:
                    pass  # the page is still loading
                if time.time() > end:
                    text = evaluate(ws, "document.body ? document.body.innerText : ''")
                    print(f"timed out waiting for: {step['wait']}\n--- page text ---\n{text}")
                    sys.exit(1)
                time.sleep(0.1)
        elif "eval" in step:
            evaluate(ws, step["eval"])
        elif "expect" in step:
            got = evaluate(ws, step["expect"])
            if not got:
                text = evaluate(ws, "document.body ? document.body.innerText : ''")
                print(f"not true: {step['expect']} (got {got!r})\n--- page text ---\n{text}")
                sys.exit(1)
        elif "click" in step:
            # The element's centre, clicked with the mouse as a person would:
            # the page sees a trusted event (`isTrusted`), unlike `el.click()`.
            box = evaluate(ws, "(() => { const e = document.querySelector(%s); e.scrollIntoView(); "
                               "const r = e.getBoundingClientRect(); "
                               "return [r.left + r.width / 2, r.top + r.height / 2]; })()"
                           % json.dumps(step["click"]))
            for kind in ("mousePressed", "mouseReleased"):
                ws.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1],
                        button="left", clickCount=1)
        elif "screenshot" in step:
            shot = ws.call("Page.captureScreenshot", format="png")
            with open(step["screenshot"], "wb") as f:
                f.write(base64.b64decode(shot["data"]))
        print("ok:", json.dumps(step))


if __name__ == "__main__":
    main()
