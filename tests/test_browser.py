"""The explorer in a real browser: JupyterLab on 127.0.0.1 driven by Playwright in Debian's headless Chromium.

A temporary folder gets a tiny synthetic UniAD run and a notebook that builds an Explorer on it.
The test opens the notebook in JupyterLab, runs it, drags the threshold slider with the mouse and
checks that the page changed (the printed numbers and the drawn figure), then saves a screenshot
to ``figures_dir()``: a temporary folder under pytest (``ADNOTES_FIGURES=$PWD/figures pytest -m
browser`` refreshes ``figures/09_explorer_browser.png``). Skipped when /usr/bin/chromium or playwright is missing
(``apt-get install chromium``; ``pip install playwright``; never ``playwright install``).
"""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
import torch

from adnotes.paths import figures_dir
from adnotes.train import train
from fixtures import tiny_config, tiny_features

CHROMIUM = Path("/usr/bin/chromium")
# Headless, as root, on a machine without internet: no sandbox, no GPU, no background connections.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no {CHROMIUM} (apt-get install -y chromium)")]

NOTEBOOK = """\
import torch
from adnotes.explorer import Explorer
from adnotes.features import FeatureSet

ex = Explorer({"uniad": "runs/uniad"}, FeatureSet(**torch.load("test_features.pt")))
ex.layout()"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """(url, folder) of a token-less JupyterLab serving a folder with a tiny run and an explorer notebook."""
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    feats = tiny_features()
    cfg = tiny_config()
    cfg.model.args["neighbor_size"] = 3
    cfg.eval.keep_steps = [2]
    train(cfg, "uniad", runs=tmp_path / "runs", features=feats)
    torch.set_num_threads(threads)
    test = feats[1]
    torch.save({"features": test.features, "labels": test.labels, "classes": test.classes, "masks": test.masks},
               tmp_path / "test_features.pt")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(NOTEBOOK)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "explorer.ipynb")
    # Settings of this JupyterLab only: no news or update checks (no internet here).
    settings = tmp_path / "lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false",
                                                                           "checkForUpdates": False}))
    port = free_port()
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                        "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
                        "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime"),
                        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab-settings"),
                        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-workspaces"),
                        "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    log = open(tmp_path / "jupyterlab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         "--ServerApp.port_retries=0", "--IdentityProvider.token=", "--ServerApp.password=",
         f"--ServerApp.root_dir={tmp_path}", "--LabApp.news_url=None", "--LabApp.extension_manager=readonly",
         *(["--allow-root"] if os.geteuid() == 0 else [])],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start:\n{(tmp_path / 'jupyterlab.log').read_text()}")
                time.sleep(0.5)
        yield url, tmp_path
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_the_explorer_renders_in_jupyterlab_and_its_threshold_slider_redraws_it(lab):
    from playwright.sync_api import expect, sync_playwright

    url, folder = lab
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{url}/lab/tree/explorer.ipynb")
            page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=60_000)
            expect(page.get_by_text("Python 3 (ipykernel) | Idle")).to_be_visible(timeout=60_000)
            page.get_by_text("Run", exact=True).first.click()  # the menu, then Run All Cells
            page.get_by_text("Run All Cells", exact=True).click()
            metrics, view = page.locator(".adnotes-metrics"), page.locator(".adnotes-view")
            expect(metrics).to_contain_text("precision", timeout=60_000)
            expect(view).to_be_visible()
            before_text, before_src = metrics.inner_text(), view.get_attribute("src")
            # Drag the threshold slider's handle to the right: one change on release (continuous_update=False).
            box = page.locator(".adnotes-threshold .noUi-handle").bounding_box()
            y = box["y"] + box["height"] / 2
            page.mouse.move(box["x"] + box["width"] / 2, y)
            page.mouse.down()
            page.mouse.move(box["x"] + 80, y, steps=5)
            page.mouse.up()
            expect(metrics).not_to_have_text(before_text, timeout=30_000)
            expect(view).not_to_have_attribute("src", before_src, timeout=30_000)  # a new PNG was drawn
            after_text = metrics.inner_text()
            assert "F1" in after_text and after_text != before_text
            shot = figures_dir() / "09_explorer_browser.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.locator(".jp-Notebook .jp-Cell").first.screenshot(path=str(shot))
        finally:
            browser.close()
    print(f"before: {before_text!r}\nafter: {after_text!r}\nscreenshot: {shot}")
