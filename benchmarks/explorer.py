"""Benchmark: the explorer in a real headless Chromium (targets: trace an organism prompt end to end ≤ 3 s;
re-prune after a slider change ≤ 300 ms; the page stays usable with ~5,000 nodes).

    python benchmarks/explorer.py [--screenshot runs/explorer.png]

Starts `streamlit run app.py`, waits for the example to be traced, then times (wall clock in the browser, from the
action to the page showing the new result): tracing a new prompt, moving the node-threshold slider one step, and
showing every node of the full graph (thresholds at 1.0); prints a table.
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
APP = Path(__file__).resolve().parent.parent / "app.py"
LONG_PROMPT = ("After a long day at the park, when Mary and John went to the big store near the old station, John "
               "gave a drink to")


def _wait_header_change(page, old: str, timeout: float = 120.0) -> tuple[float, str]:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        text = page.locator("text=pruned to").first.inner_text()
        if text != old:
            return time.perf_counter() - t0, text
        time.sleep(0.02)
    raise TimeoutError("the page did not update")


def main() -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser()
    parser.add_argument("--screenshot", default="runs/explorer.png")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port),
                             "--server.headless", "true", "--server.fileWatcherType", "none"], cwd=APP.parent,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(180):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=FLAGS)
            page = browser.new_page(viewport={"width": 1600, "height": 1200})
            t0 = time.perf_counter()
            page.goto(url)
            page.get_by_text("pruned to").first.wait_for(timeout=180_000)
            first = time.perf_counter() - t0
            rows = [("open the page, load the model, trace the example", first, "—")]
            header = page.locator("text=pruned to").first.inner_text()
            page.get_by_role("textbox", name="prompt").fill(
                "When Anna and David went to the park, David gave a book to")
            page.get_by_role("textbox", name="token", exact=True).fill("Anna")
            page.get_by_role("textbox", name="minus token").fill("David")
            time.sleep(1.0)  # let the text inputs' reruns settle
            header = page.locator("text=pruned to").first.inner_text()
            t0 = time.perf_counter()
            page.get_by_role("button", name="trace").click()
            page.get_by_text("Anna −  David").first.wait_for(timeout=60_000)
            rows.append(("trace a new prompt (click → graph shown)", time.perf_counter() - t0, "<= 3 s"))
            header = page.locator("text=pruned to").first.inner_text()
            slider = page.get_by_role("slider").nth(0)
            times = []
            for _ in range(3):
                slider.focus()
                t0 = time.perf_counter()
                page.keyboard.press("ArrowLeft")
                dt, header = _wait_header_change(page, header)
                times.append(dt)
            nodes = re.search(r"pruned to ([\d,]+)", header).group(1)
            rows.append((f"re-prune after a slider step ({nodes} nodes shown), median of 3", sorted(times)[1],
                         "<= 0.3 s"))
            for k in range(2):  # thresholds to the maximum: every node of the full graph
                s = page.get_by_role("slider").nth(k)
                s.focus()
                page.keyboard.press("End")
                dt, header = _wait_header_change(page, header, 120)
            rows.append(("thresholds at 1.0: re-prune and draw the whole graph", dt, "usable"))
            page.wait_for_timeout(500)
            nodes = re.search(r"pruned to ([\d,]+)", header).group(1)
            t1 = time.perf_counter()
            page.get_by_role("tab", name="checks", exact=True).click()
            page.get_by_text("replacement (full)").first.wait_for(timeout=60_000)
            rows.append((f"with {nodes} nodes: switch to another tab", time.perf_counter() - t1, "usable"))
            page.get_by_role("tab", name="graph", exact=True).click()
            # a longer prompt: more than 5,000 nodes, all shown (thresholds still at 1.0)
            page.get_by_role("textbox", name="prompt").fill(LONG_PROMPT)
            time.sleep(1.0)
            header = page.locator("text=pruned to").first.inner_text()
            t0 = time.perf_counter()
            page.get_by_role("button", name="trace").click()
            dt, header = _wait_header_change(page, header, 180)
            page.locator(".js-plotly-plot .scatterlayer path.point").first.wait_for(timeout=60_000)
            dt_plot = time.perf_counter() - t0
            nodes = re.search(r"pruned to ([\d,]+)", header).group(1)
            rows.append((f"trace a {nodes}-node prompt, draw every node", dt_plot, "usable"))
            slider = page.get_by_role("slider").nth(0)
            slider.focus()
            t0 = time.perf_counter()
            page.keyboard.press("ArrowLeft")
            dt, header = _wait_header_change(page, header, 120)
            rows.append((f"with {nodes} nodes: one slider step", dt, "usable"))
            t1 = time.perf_counter()
            page.get_by_role("tab", name="checks", exact=True).click()
            page.get_by_text("replacement (full)").first.wait_for(timeout=60_000)
            rows.append((f"with {nodes} nodes: switch to another tab", time.perf_counter() - t1, "usable"))
            Path(args.screenshot).parent.mkdir(parents=True, exist_ok=True)
            page.get_by_role("tab", name="graph", exact=True).click()
            page.wait_for_timeout(1500)
            page.screenshot(path=args.screenshot, full_page=False)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"{'measure':<62} {'seconds':>8} {'target':>9}")
    for name, value, target in rows:
        print(f"{name:<62} {value:>8.2f} {target:>9}")
    print(f"screenshot: {args.screenshot}")


if __name__ == "__main__":
    main()
