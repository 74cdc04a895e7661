"""The page in a real browser (headless Chromium through Playwright) against a real `mgsv serve`:
choose a clip, see the ranked tracks and their strips, play a cut in sync, use the keys, render
and download, export a timeline; with a fit, the sections and the join on the strip, the join
moved. Skipped where Playwright or Chromium is missing. Leaves screenshots in test-artifacts/
(serve-page.png, serve-page-fit.png)."""
from __future__ import annotations

from pathlib import Path

import pytest
from _serve_helpers import REPO

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-gpu", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SCREENSHOT = REPO / "test-artifacts" / "serve-page.png"
FIT_SCREENSHOT = REPO / "test-artifacts" / "serve-page-fit.png"
WAIT_MS = 90_000  # a busy 2-core machine renders slowly

STRIPS_DRAWN = """() => {
  const canvases = [...document.querySelectorAll('.track canvas')];
  if (!canvases.length) return false;
  return canvases.every((canvas) => {
    if (!canvas.width || !canvas.height) return false;
    const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    const colours = new Set();
    for (let i = 0; i < pixels.length; i += 4 * 7) colours.add(pixels[i] + ',' + pixels[i + 1] + ',' + pixels[i + 2]);
    return colours.size >= 4;  // background, strip, the cut, the moment: not a blank canvas
  });
}"""


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def test_the_page_suggests_plays_renders_and_exports(browser, live_server, serve_library, tmp_path):
    """With a clip whose name is not ASCII: the page, the render and the timeline keep it."""
    import shutil

    clip = tmp_path / "Café – été.mp4"
    shutil.copy2(serve_library.clip, clip)
    page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda message: problems.append(f"console: {message.text}") if message.type == "error" else None)
    page.on("response", lambda response: problems.append(f"{response.status} {response.url}")
            if response.status >= 400 else None)
    page.set_default_timeout(WAIT_MS)
    SCREENSHOT.unlink(missing_ok=True)
    try:
        page.goto(live_server.url)
        page.wait_for_function("() => document.querySelector('#server').textContent.includes('3 tracks')")
        assert "#token" not in page.url  # the token leaves the address bar

        page.set_input_files("#file", str(clip))
        page.wait_for_function("() => document.querySelector('#message').textContent"
                               ".startsWith('3 tracks for Café – été.mp4')")
        assert page.locator(".track").count() == 3
        assert page.locator(".track").first.get_attribute("class").split() == ["track", "selected"]
        page.wait_for_function(STRIPS_DRAWN)

        # keyboard: down/up pick the track, right/left move the cut to the next/previous beat
        page.keyboard.press("ArrowDown")
        assert page.locator(".track.selected").get_attribute("data-rank") == "2"
        page.keyboard.press("ArrowUp")
        assert page.locator(".track.selected").get_attribute("data-rank") == "1"
        before = page.locator(".track.selected .why").inner_text()
        moved = "(before) => document.querySelector('.track.selected .why').textContent !== before"
        page.keyboard.press("ArrowLeft")  # the cut of an untrained model often ends with the track
        page.wait_for_function(f"(before) => ({moved})(before) || "
                               "document.querySelector('#message').textContent.includes('no earlier beat')", arg=before)
        if page.locator(".track.selected .why").inner_text() == before:
            page.keyboard.press("ArrowRight")
            page.wait_for_function(moved, arg=before)
        assert "moved " in page.locator(".track.selected .why").inner_text()

        # space plays the clip with the cut mixed in: the preview audio runs (the picture, muted, with it)
        page.keyboard.press(" ")
        page.wait_for_function("() => { const a = document.querySelector('#audio');"
                               " return !a.paused && a.currentTime > 0.3; }")
        assert "/api/preview?" in page.eval_on_selector("#audio", "a => a.currentSrc")
        assert page.eval_on_selector("#video", "v => v.muted") is True
        page.select_option("#mix", "duck")
        page.wait_for_function("() => document.querySelector('#audio').currentSrc.includes('mix=duck')")
        page.keyboard.press(" ")
        page.wait_for_function("() => document.querySelector('#audio').paused")
        page.wait_for_function(STRIPS_DRAWN)

        # render and download
        with page.expect_download(timeout=WAIT_MS) as rendered:
            page.click("#render")
        video = rendered.value
        assert video.suggested_filename == "Café – été.mgsv.mp4"
        saved = tmp_path / video.suggested_filename
        video.save_as(saved)
        assert saved.stat().st_size > 10_000
        from mgsv_cli.media import ffmpeg as media

        info = media.probe(saved)
        assert info.has_video and info.has_audio

        # export a timeline
        page.select_option("#format", "otio")
        with page.expect_download(timeout=WAIT_MS) as exported:
            page.click("#export")
        assert exported.value.suggested_filename == "Café – été.mgsv.otio"
        page.wait_for_function("() => document.querySelector('#message').textContent.startsWith('timeline')")

        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        assert problems == []
    finally:
        if not SCREENSHOT.exists():  # a failure still leaves a picture of where it stopped
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        page.close()


def test_the_page_shows_sections_and_the_join_and_moves_it(browser, live_server, serve_library):
    """fit ending: the strip shows the sections and the spans heard; the join moves to another bar line."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.set_default_timeout(WAIT_MS)
    try:
        page.goto(live_server.url)
        page.wait_for_function("() => document.querySelector('#server').textContent.includes('3 tracks')")
        page.select_option("#fit", "ending")
        page.set_input_files("#file", str(serve_library.clip))
        page.wait_for_function("() => document.querySelector('#message').textContent.startsWith('3 tracks for')")
        page.wait_for_function(STRIPS_DRAWN)
        beta = page.locator(".track", has_text="Beta")
        beta.click()
        why = beta.locator(".why")
        page.wait_for_function("(el) => el.textContent.includes('ending')", arg=why.element_handle())
        assert "sections" in why.inner_text()  # from /api/structure: the index's sections
        # The cut to the track's start: the server plans the edit from there, with a join to the ending.
        box = beta.locator("canvas").bounding_box()
        beta.locator("canvas").click(position={"x": 2, "y": box["height"] / 2})
        page.wait_for_function("(el) => /join \\d/.test(el.textContent)", arg=why.element_handle())
        assert beta.locator("button.join").first.is_visible()
        before = why.inner_text()
        page.keyboard.press("]")
        page.wait_for_function("() => document.querySelector('#message').textContent.includes('join moved') || "
                               "document.querySelector('#message').textContent.includes('cannot join there')")
        if "cannot join there" in page.locator("#message").inner_text():
            page.keyboard.press("[")
            page.wait_for_function("() => document.querySelector('#message').textContent.includes('join moved')")
        page.wait_for_function("(before) => document.querySelector('.track.selected .why').textContent !== before",
                               arg=before)
        assert "/api/preview?" in page.eval_on_selector("#audio", "a => a.getAttribute('src')")
        assert "join=" in page.eval_on_selector("#audio", "a => a.getAttribute('src')")
        assert problems == []
    finally:
        FIT_SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(FIT_SCREENSHOT), full_page=True)
        page.close()


def test_the_page_refuses_what_is_not_a_video(browser, live_server, tmp_path):
    page = browser.new_page()
    page.set_default_timeout(WAIT_MS)
    try:
        page.goto(live_server.url)
        page.wait_for_function("() => document.querySelector('#server').textContent.includes('tracks')")
        notes = tmp_path / "notes.txt"
        notes.write_text("not a clip")
        page.set_input_files("#file", str(notes))
        page.wait_for_function("() => document.querySelector('.message').textContent.includes('not a video file')")
        assert page.locator("#work").is_hidden()
    finally:
        page.close()


def test_without_the_token_the_page_says_where_to_get_it(browser, live_server):
    page = browser.new_page()
    try:
        page.goto(live_server.url.split("#")[0])
        page.wait_for_function("() => document.querySelector('#server').textContent.includes('access token')")
    finally:
        page.close()


def test_screenshots_are_git_ignored():
    assert "test-artifacts/" in (REPO / ".gitignore").read_text().split()
