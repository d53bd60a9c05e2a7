"""The page at ``GET /`` in a real browser: Debian's chromium driven by Playwright, photos given to the page's
file input as a person would choose them (one dropped on the drop zone), each photo's top 3 read off the page and compared with the server's
own JSON answer, and "none of these" shown for a photo the reject option turns away."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import httpx
import pytest
from serving import cli_server, photo
from tiny_onnx import GREY, make_model


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


pytestmark = pytest.mark.skipif(_chromium() is None, reason="no Chromium here (.ci/run installs Debian's chromium)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]

# A photo dropped on the drop zone, as a browser delivers a file dragged from the desktop.
DROP = """([data, name]) => {
  const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
  const files = new DataTransfer();
  files.items.add(new File([bytes], name, {type: "image/jpeg"}));
  document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: files, bubbles: true,
                                                                      cancelable: true}));
}"""


def test_dropped_photos_show_their_top_3_and_none_of_these(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (the test extra)")
    photos = [photo(tmp_path / "red shirt.jpg", (230, 20, 20)), photo(tmp_path / "blue.jpg", (10, 20, 240), seed=1),
              photo(tmp_path / "grey.png", GREY, fmt="PNG", seed=2)]
    (tmp_path / "notes.jpg").write_bytes(b"not a photo")
    with cli_server(str(make_model(tmp_path / "colours.onnx"))) as (url, _):
        expected = {p.name: httpx.post(url + "predict?k=3", content=p.read_bytes()).json()["predictions"][0]
                    for p in photos}
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=_chromium(), args=FLAGS, headless=True)
            try:
                page = browser.new_page()
                page.goto(url)
                page.wait_for_function("document.getElementById('model').textContent.includes('3 classes')")
                page.set_input_files("#files", [str(p) for p in photos[1:]] + [str(tmp_path / "notes.jpg")])
                page.evaluate(DROP, [base64.b64encode(photos[0].read_bytes()).decode(), photos[0].name])
                page.wait_for_function("document.querySelectorAll('.photo[data-done=true]').length === 4",
                                       timeout=30_000)
                shown = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('.photo')].map(li => [
                    li.querySelector('.name').textContent,
                    {answer: li.querySelector('.answer, .error').textContent,
                     top: [...li.querySelectorAll('.top li')].map(r => [r.querySelector('.class').textContent,
                                                                         r.querySelector('.probability').textContent])}]))""")
                header = page.text_content("#model")
            finally:
                browser.close()
    assert "colours/tiny/logreg: 3 classes (red, green, blue), test accuracy 87.5%" in header
    for name, p in expected.items():
        assert shown[name]["top"] == [[t["class"], f"{100 * t['probability']:.1f}%"] for t in p["top"]], name
    assert shown["red shirt.jpg"]["answer"] == "red" and shown["blue.jpg"]["answer"] == "blue"
    assert shown["grey.png"]["answer"] == "none of these" and expected["grey.png"]["unknown"] is True
    assert shown["notes.jpg"] == {"answer": "the upload cannot be used as an image: not an image Pillow can read "
                                            "(unknown or corrupt format)", "top": []}
