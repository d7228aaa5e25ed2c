#!/usr/bin/env python3
"""Open dashboards, as the browser's script keeps them: each follows /ui/live (SSE) and, on each
message (an event, or the tick every 5 s), fetches its page's <main> again.

    dashboards.py HOST:PORT N PAGE SECONDS  ->  prints the page fetches made
"""
import http.client
import sys
import threading
import time

host, port = sys.argv[1].rsplit(":", 1)
n, page, seconds = int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
fetches = 0
lock = threading.Lock()
end = time.time() + seconds


def dashboard():
    global fetches
    pages = http.client.HTTPConnection(host, int(port), timeout=30)
    live = http.client.HTTPConnection(host, int(port), timeout=30)
    live.request("GET", "/ui/live", headers={"Accept": "text/event-stream"})
    stream = live.getresponse()
    assert stream.status == 200, stream.status
    while time.time() < end:
        # Through the response, not its socket: the stream is chunked.
        line = stream.readline()
        if not line:
            return
        if line.strip():
            continue
        # A message ended: fetch the page as the script does.
        pages.request("GET", page, headers={"X-Roo-Part": "main"})
        r = pages.getresponse()
        r.read()
        assert r.status == 200, r.status
        with lock:
            fetches += 1


threads = [threading.Thread(target=dashboard, daemon=True) for _ in range(n)]
for t in threads:
    t.start()
time.sleep(seconds)
print(fetches)
