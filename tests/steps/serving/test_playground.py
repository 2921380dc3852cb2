"""The playground at / in a real headless Chromium: the page lists the served models, streams a
chat reply and a plain completion into the page (the same greedy text the API gives), shows the
API's errors, classifies texts into a table, and renders something (the screenshot is not blank)."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image, ImageStat

from steps.inference.loading import LoadedModel, load
from steps.serving.app import Limits, chat_prompt, create_app
from steps.serving.openai_api import ChatMessage
from tests.steps.inference import tiny_models
from tests.steps.serving.conftest import live_server

pytest.importorskip("selenium", reason="the browser test needs selenium (pip install -e '.[test]')")
# Imported after the skip above: without selenium the module is skipped, not an error.
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

LIMITS = Limits(max_prompt_tokens=None, max_tokens=40, max_batch=4, max_texts=8)
WAIT_S = 30  # generous for a loaded CPU; each wait ends as soon as its condition holds

# Records, at each change of the log, the text length of the newest reply: what a reader sees grow.
WATCH_REPLY = """
window.seenLengths = [];
new MutationObserver(() => {
  const replies = document.querySelectorAll('#log .turn.assistant .text');
  if (replies.length) window.seenLengths.push(replies[replies.length - 1].textContent.length);
}).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, LoadedModel]:
    root = tmp_path_factory.mktemp("models")
    tok = tiny_models.tokenizer()
    return {"pretrain": load(tiny_models.lm_folder(root, tok)),
            "instruct": load(tiny_models.instruct_folder(root, tok, context_length=256)),
            "classifier": load(tiny_models.classifier_folder(root, tok))}


@pytest.fixture(scope="module")
def base_url(models) -> Iterator[str]:
    with live_server(create_app(list(models.values()), LIMITS)) as url:
        yield url


def wait(driver, condition, message: str):
    return WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(lambda d: condition(d), message)


def set_field(driver, field_id: str, value: str) -> None:
    field = driver.find_element(By.ID, field_id)
    field.clear()
    if value:
        field.send_keys(value)


def send_and_read(driver, message: str) -> tuple[str, list[int], int]:
    """Send `message` from the compose box; once the reply is complete: its text, the lengths it
    was seen to have while it streamed, and how many stream events the page applied."""
    driver.execute_script(WATCH_REPLY)
    before = len(driver.find_elements(By.CSS_SELECTOR, "#log .turn.assistant"))
    box = driver.find_element(By.ID, "message")
    box.send_keys(message)
    box.send_keys(Keys.ENTER)  # Enter sends
    reply = wait(driver, lambda d: (r := d.find_elements(By.CSS_SELECTOR, "#log .turn.assistant"))[before:] and r[-1],
                 "no reply appeared in the log")
    wait(driver, lambda d: reply.get_attribute("data-state") == "done", "the reply never finished streaming")
    text = reply.find_element(By.CSS_SELECTOR, ".text").get_property("textContent")
    return text, driver.execute_script("return window.seenLengths"), int(reply.get_attribute("data-chunks"))


def long_message(loaded: LoadedModel) -> str:
    """A message whose chat prompt takes more than half the context: one fits, two do not."""
    message = "Say hello."
    while len(chat_prompt(loaded, [ChatMessage(role="user", content=message)])) <= loaded.context_length // 2 + 10:
        message += " Say hello."
    return message


def assert_streamed(text: str, seen: list[int], chunks: int) -> None:
    grew = [n for i, n in enumerate(seen) if n and (i == 0 or n != seen[i - 1])]
    assert text, "the reply is empty"
    assert chunks > 1, f"the page got the reply in {chunks} piece(s), not as a stream"
    assert len(grew) > 1 and grew == sorted(grew) and grew[-1] == len(text), \
        f"the reply was not seen to grow piece by piece: lengths {seen}"


def test_the_playground_chats_completes_classifies_and_shows_errors(base_url, browser, models, tmp_path) -> None:
    browser.get(base_url + "/")
    wait(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true",
         "the page never listed the models")
    assert browser.title == "gptpipe playground"
    assert browser.find_element(By.ID, "page-error").text == ""
    picker = Select(browser.find_element(By.ID, "model"))
    assert [o.get_attribute("value") for o in picker.options] == ["instruct", "pretrain"]  # no classifier, chat first
    assert picker.first_selected_option.get_attribute("value") == "instruct"
    assert browser.find_element(By.ID, "classify-section").is_displayed()

    # Chat, greedy: the streamed reply is the one the API gives for the same conversation.
    set_field(browser, "temperature", "0")
    set_field(browser, "max-tokens", "30")
    text, seen, chunks = send_and_read(browser, "Say hello.")
    assert_streamed(text, seen, chunks)
    expected = httpx.post(f"{base_url}/v1/chat/completions", timeout=60, json={
        "model": "instruct", "messages": [{"role": "user", "content": "Say hello."}], "temperature": 0,
        "top_p": 1, "max_tokens": 30}).json()["choices"][0]["message"]["content"]
    assert text == expected
    assert "Done in" in browser.find_element(By.ID, "status").text

    # The API's error is shown, and the message is given back to edit.
    set_field(browser, "max-tokens", "999")
    browser.find_element(By.ID, "message").send_keys("Say hello again.", Keys.ENTER)
    error = wait(browser, lambda d: d.find_element(By.ID, "chat-error").text, "no error was shown")
    assert "400" in error and "max_tokens is 999" in error and "--max-tokens" in error
    assert browser.find_element(By.ID, "message").get_property("value") == "Say hello again."
    assert len(browser.find_elements(By.CSS_SELECTOR, "#log .turn.assistant")) == 1

    # Reset empties the conversation.
    browser.find_element(By.ID, "reset").click()
    assert browser.find_elements(By.CSS_SELECTOR, "#log .turn") == []

    # A conversation that outgrows the context loses its oldest exchange, and the page says so.
    set_field(browser, "message", "")
    set_field(browser, "max-tokens", "")
    long = long_message(models["instruct"])
    for _ in range(2):
        send_and_read(browser, long)
    assert browser.find_element(By.ID, "chat-error").text == ""
    notes = [n.text for n in browser.find_elements(By.CSS_SELECTOR, "#log .note")]
    assert notes == ["The oldest exchange was dropped: the conversation no longer fits the model's context."]
    browser.find_element(By.ID, "reset").click()

    # A plain language model continues the text, through /v1/completions.
    picker.select_by_value("pretrain")
    set_field(browser, "message", "")
    set_field(browser, "max-tokens", "20")
    text, seen, chunks = send_and_read(browser, "Win a free prize")
    assert_streamed(text, seen, chunks)
    expected = httpx.post(f"{base_url}/v1/completions", timeout=60, json={
        "model": "pretrain", "prompt": "Win a free prize", "temperature": 0, "top_p": 1,
        "max_tokens": 20}).json()["choices"][0]["text"]
    assert text == expected
    assert browser.find_element(By.ID, "chat-error").text == ""

    # Classify: a row per text with the label and each class's probability, as the API gives them.
    texts = tiny_models.TEXTS[:2]
    browser.find_element(By.ID, "texts").send_keys("\n".join(texts))
    browser.find_element(By.ID, "classify").click()
    rows = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#classify-results tbody tr"),
                "no classification appeared")
    head = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#classify-results thead th")]
    assert head == ["Text", "Label", *(f"P({label})" for label in tiny_models.LABELS)]
    api = httpx.post(f"{base_url}/v1/classify", json={"model": "classifier", "input": texts}, timeout=60).json()["data"]
    shown = [[td.text for td in row.find_elements(By.TAG_NAME, "td")] for row in rows]
    assert shown == [[t, d["label"], *(f"{d['probabilities'][label]:.3f}" for label in tiny_models.LABELS)]
                     for t, d in zip(texts, api)]

    # What a person would see is a page, not a blank: many colours, and contrast.
    png = browser.get_screenshot_as_png()
    (tmp_path / "playground.png").write_bytes(png)  # kept by pytest's tmp_path for a look on failure
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.width >= 800 and image.height >= 600
    colours = image.getcolors(maxcolors=1 << 20)
    assert len(colours) > 50, f"the screenshot has only {len(colours)} colours: is the page blank?"
    assert max(ImageStat.Stat(image.convert("L")).stddev) > 20, "the screenshot has next to no contrast"


def test_the_page_is_served_at_the_root(base_url) -> None:
    page = httpx.get(f"{base_url}/", timeout=60)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # Offline machines: nothing may come from elsewhere.
    assert "http://" not in page.text and "https://" not in page.text and "//cdn" not in page.text
