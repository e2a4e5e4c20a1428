"""The playground in a real Chromium (Debian's package, driven by Playwright) against the real server
with the tiny model: the page finds its controls by label and role, uploads a file, continues it
(the audio plays while it is made, then the player holds the file and the waveform is drawn), runs
a job with a moving progress bar and cancels it, and shows a bad value's error by its field.

Without Chromium these tests are skipped, saying so, unless MUSICGEN_TESTS_REQUIRE_BROWSER=1 (CI
sets it) turns the skip into a failure. A failing test leaves a screenshot next to the server's
log; MUSICGEN_SCREENSHOT=path saves the README's screenshot there.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import TINY_TEXT, Server, write_tone


@pytest.fixture(scope="module")
def server(start_server: Any, tiny_models: dict[str, str]) -> Server:
    started: Server = start_server(settings={"MUSICGEN_MODEL": TINY_TEXT, "MUSICGEN_MAX_DURATION_S": "30"})
    started.wait_until("ready", timeout=180)
    return started


@pytest.fixture
def page(browser: Any, server: Server, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.goto(f"{server.url}/playground")
    yield opened
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        shot = server.log_path.parent / f"{request.node.name}.png"
        opened.screenshot(path=str(shot), full_page=True)
        print(f"screenshot of the failure: {shot}")
    context.close()
    assert not errors, f"the page raised: {errors}"


@pytest.fixture(scope="module")
def song(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tone(tmp_path_factory.mktemp("playground") / "my song.wav", seconds=4.0)


def expect_ready(page: Any) -> None:
    from playwright.sync_api import expect

    expect(page.get_by_role("status").first).to_contain_text("Ready", timeout=30_000)
    expect(page.get_by_role("status").first).to_contain_text(TINY_TEXT)


def wait_until(page: Any, expression: str, timeout_s: float = 60) -> None:
    """Polls `expression` in the page until it is true. (Playwright's wait_for_function evaluates
    its predicate in a way the page's Content-Security-Policy forbids; evaluate does not.)"""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"still false after {timeout_s} s: {expression}"
        time.sleep(0.05)


def waveform_pixels(page: Any) -> int:
    """How many of the waveform canvas's pixels differ from its background."""
    return int(
        page.evaluate(
            """() => {
                const canvas = document.getElementById("waveform");
                const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
                let lit = 0;
                for (let i = 0; i < data.length; i += 4) if (data[i + 2] > 100) lit++;
                return lit;
            }"""
        )
    )


def test_every_control_has_a_visible_label(page: Any) -> None:
    expect_ready(page)
    for label in [
        "Prompt",
        "Music to continue",
        "Length of new music (seconds)",
        "Guidance",
        "Temperature",
        "Top-k",
        "Top-p",
        "Seed",
        "File format",
        "Progress",
        "Listen",
    ]:
        control = page.get_by_label(label, exact=True)
        assert control.count() == 1, label
        assert page.get_by_text(label, exact=True).first.is_visible(), label
    for name in ["Continue", "Generate", "Cancel"]:
        assert page.get_by_role("button", name=name, exact=True).count() == 1
    assert page.get_by_role("status").first.inner_text().count("licence") == 1


def test_upload_and_continue_plays_and_draws_the_result(page: Any, song: Path, server: Server) -> None:
    from playwright.sync_api import expect

    expect_ready(page)
    page.get_by_label("Music to continue").set_input_files(str(song))
    expect(page.locator("#source-info")).to_contain_text("my song.wav: 4.0 s", timeout=30_000)
    page.get_by_label("Prompt", exact=True).fill("a calm organ")
    page.get_by_label("Length of new music (seconds)").fill("3")
    page.get_by_label("Seed").fill("42")
    before = waveform_pixels(page)
    page.get_by_role("button", name="Continue", exact=True).click()
    expect(page.locator("#result-info")).to_contain_text("seed 42", timeout=60_000)
    wait_until(page, "document.getElementById('player').duration > 0")
    assert page.evaluate("document.getElementById('player').duration") == pytest.approx(3.0, abs=0.01)
    assert waveform_pixels(page) > before + 500
    assert page.get_by_role("link", name="Download continuation-42.wav").is_visible()
    expect(page.locator("#history li")).to_have_count(1)
    assert "first sound after" in page.locator("#result-info").inner_text()
    screenshot = os.environ.get("MUSICGEN_SCREENSHOT")
    if screenshot:
        page.screenshot(path=screenshot, full_page=True)


def test_a_job_shows_its_progress_and_can_be_canceled(page: Any) -> None:
    from playwright.sync_api import expect

    expect_ready(page)
    page.get_by_label("Prompt", exact=True).fill("a long drone")
    page.get_by_label("Length of new music (seconds)").fill("30")
    page.get_by_role("button", name="Generate", exact=True).click()
    progress = page.get_by_label("Progress")
    wait_until(page, "document.getElementById('progress').value > 0")
    first = float(progress.evaluate("node => node.value"))
    deadline = time.monotonic() + 30
    while float(progress.evaluate("node => node.value")) <= first:
        assert time.monotonic() < deadline, "the progress bar did not move"
        time.sleep(0.1)
    assert float(progress.evaluate("node => node.value")) < 1
    page.get_by_role("button", name="Cancel", exact=True).click()
    expect(page.locator("#activity")).to_have_text("Canceled.", timeout=30_000)
    expect(page.get_by_role("button", name="Generate", exact=True)).to_be_enabled()


def test_a_bad_value_is_shown_next_to_its_field(page: Any, song: Path) -> None:
    from playwright.sync_api import expect

    expect_ready(page)
    page.get_by_label("Music to continue").set_input_files(str(song))
    expect(page.locator("#source-info")).to_contain_text("4.0 s", timeout=30_000)
    page.get_by_label("Length of new music (seconds)").fill("999")
    page.get_by_role("button", name="Continue", exact=True).click()
    error = page.locator("#duration_s-error")
    expect(error).to_contain_text("Must be at most 30 seconds", timeout=30_000)
    duration = page.get_by_label("Length of new music (seconds)")
    assert duration.get_attribute("aria-describedby") == "duration_s-error"
    assert "invalid" in (duration.get_attribute("class") or "")
    expect(page.locator("#general-error")).to_be_empty()


def test_a_file_that_is_not_audio_is_refused_next_to_the_source(page: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    expect_ready(page)
    notes = tmp_path / "notes.wav"
    notes.write_text("these are not audio samples\n" * 40)
    page.get_by_label("Music to continue").set_input_files(str(notes))
    expect(page.locator("#source-error")).to_contain_text("'notes.wav' is not a readable audio file", timeout=30_000)
    page.get_by_role("button", name="Continue", exact=True).click()
    expect(page.locator("#source-error")).to_contain_text("Choose the music to continue first")


def _source_loaded(page: Any, song: Path) -> None:
    from playwright.sync_api import expect

    expect_ready(page)
    page.get_by_label("Music to continue").set_input_files(str(song))
    expect(page.locator("#source-info")).to_contain_text("4.0 s", timeout=30_000)
    expect(page.get_by_label("Prompt starts at (seconds)")).to_be_visible()


def _newest_output(server: Server, since: float) -> Path:
    """The newest file the server wrote in its output directory after `since` (time.time())."""
    output = Path(server.env["MUSICGEN_OUTPUT_DIR"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        files = [path for path in output.glob("musicgen-*") if path.stat().st_mtime >= since]
        if files:
            return max(files, key=lambda path: path.stat().st_mtime)
        time.sleep(0.1)
    raise AssertionError("the server wrote no file")


def _continue_and_read_provenance(page: Any, server: Server) -> tuple[dict[str, Any], str]:
    """Presses Continue and returns what the server received, from the provenance in the file it
    wrote (its own metadata), and that file's format."""
    import json

    import soundfile as sf
    from playwright.sync_api import expect

    since = time.time()
    page.get_by_role("button", name="Continue", exact=True).click()
    expect(page.locator("#activity")).to_have_text("Done.", timeout=60_000)
    with sf.SoundFile(str(_newest_output(server, since))) as written:
        return json.loads(written.comment), written.format


def test_dragging_the_prompt_region_sets_what_the_server_receives(page: Any, song: Path, server: Server) -> None:

    from playwright.sync_api import expect

    _source_loaded(page, song)
    # The region starts as the server's default: the last 4 s of a 4 s source (at most 10 s).
    start = page.get_by_label("Prompt starts at (seconds)")
    length = page.get_by_label("Prompt length (seconds)")
    assert (start.input_value(), length.input_value()) == ("0.00", "4.00")
    canvas = page.locator("#source-wave")
    box = canvas.bounding_box()
    assert box is not None
    # Drag the region's left edge to the middle (resize), then the whole region to the left (move).
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + 2, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, y, steps=8)
    page.mouse.up()
    assert float(start.input_value()) == pytest.approx(2.0, abs=0.1)
    assert float(length.input_value()) == pytest.approx(2.0, abs=0.1)
    page.mouse.move(box["x"] + box["width"] * 0.75, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, y, steps=8)
    page.mouse.up()
    shown_start, shown_length = float(start.input_value()), float(length.input_value())
    assert shown_start == pytest.approx(1.0, abs=0.1) and shown_length == pytest.approx(2.0, abs=0.1)
    page.get_by_label("Length of new music (seconds)").fill("1")
    parameters, _ = _continue_and_read_provenance(page, server)
    assert parameters["prompt_start_s"] == pytest.approx(shown_start, abs=0.011)
    assert parameters["prompt_duration_s"] == pytest.approx(shown_length, abs=0.021)  # whole codec frames
    # The timeline: the source up to the region's end, then the new music, the join marked there.
    timeline = page.locator("#timeline")
    assert float(timeline.get_attribute("data-join-s") or "nan") == pytest.approx(shown_start + shown_length, abs=0.02)
    join_x = int(timeline.get_attribute("data-join-x") or "-1")
    assert join_x == pytest.approx(800 * (shown_start + shown_length) / (shown_start + shown_length + 1.0), abs=2)
    marker = page.evaluate(
        f"""() => Array.from(document.getElementById("timeline").getContext("2d")
                .getImageData({join_x}, 45, 1, 1).data)"""
    )
    assert marker[:3] == [255, 209, 102], "the join is marked in yellow"
    expect(page.locator("#timeline-info")).to_contain_text("then 1.00 s of new music")


def test_three_takes_get_three_players_each_with_its_download(page: Any, song: Path) -> None:
    from playwright.sync_api import expect

    _source_loaded(page, song)
    page.get_by_label("Length of new music (seconds)").fill("1")
    page.get_by_label("Seed").fill("7")
    page.get_by_label("Takes", exact=True).fill("3")
    page.get_by_label("Sample rate").select_option("48000")
    page.get_by_label("Bit depth").select_option("pcm24")
    page.get_by_role("button", name="Continue", exact=True).click()
    expect(page.locator("#activity")).to_have_text("Done.", timeout=90_000)
    takes = page.get_by_role("list", name="The takes made").locator("li")
    expect(takes).to_have_count(3)
    for index, seed in enumerate((7, 8, 9)):
        expect(takes.nth(index)).to_contain_text(f"Take {index + 1} · seed {seed}")
        assert takes.nth(index).get_by_role("link", name=f"Download continuation-{seed}.wav").is_visible()
    wait_until(page, "Array.from(document.querySelectorAll('#take-list audio')).every((a) => a.duration > 0)")
    durations = page.evaluate("Array.from(document.querySelectorAll('#take-list audio')).map((a) => a.duration)")
    assert durations == pytest.approx([1.0, 1.0, 1.0], abs=0.01)


def test_the_level_controls_reach_the_server(page: Any, song: Path, server: Server) -> None:

    _source_loaded(page, song)
    assert page.get_by_label("Loudness target (LUFS)").is_disabled()
    page.get_by_label("Level").select_option("loudness")
    page.get_by_label("Loudness target (LUFS)").fill("-20")
    page.get_by_label("File format").select_option("flac")
    page.get_by_label("Length of new music (seconds)").fill("1")
    parameters, written_format = _continue_and_read_provenance(page, server)
    assert written_format == "FLAC"
    assert (parameters["normalization"], parameters["loudness_lufs"]) == ("loudness", -20.0)
