"""The message catalog (kb/i18n.py) and the error codes the web app translates; no Streamlit here."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from ingest.jobs import check_server_path
from kb import i18n
from kb.auth import AccessDenied, check_no_sign_in, identity_from_headers, require
from kb.config import load_settings
from kb.errors import InputError, SeekframeError
from pages.helpers import save_upload

CJK = re.compile(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]")


def test_every_key_has_both_languages_with_the_same_placeholders():
    for key, entry in i18n.CATALOG.items():
        assert set(entry) == set(i18n.LANGUAGES), key
        assert i18n.placeholders(entry["en"]) == i18n.placeholders(entry["zh"]), key
        assert entry["en"].strip() and entry["zh"].strip(), key
        assert not CJK.search(entry["en"]), f"{key}: Chinese in the English text"
        # Every Chinese text says something in Chinese, except names and symbols that read the same in both
        # (GPU, Top-p, the product name).
        assert CJK.search(entry["zh"]) or entry["zh"] == entry["en"] or entry["zh"] in ("PDF", "GPU"), key
        # Filling every placeholder works in both languages (no stray braces, no positional fields).
        params = {name: "X" for name in i18n.placeholders(entry["en"])}
        assert i18n.text(key, "en", **params) and i18n.text(key, "zh", **params)


def test_catalog_keys_used_in_the_app_exist():
    """Each t("...") in the pages names a key of the catalog (a typo would only fail when that branch runs)."""
    root = Path(__file__).resolve().parent.parent
    sources = [root / "streamlit_app.py", *sorted((root / "pages").glob("*.py"))]
    used = {key for path in sources for key in re.findall(r"""\bt\(\s*["']([a-z_]+\.[a-z_.]+)["']""",
                                                           path.read_text())}
    used |= {key for path in sources for key in re.findall(r"""["']((?:action|lib|add|sys)\.[a-z_]+)["']""",
                                                           path.read_text()) if not key.endswith(".py")}
    assert len(used) > 100
    assert sorted(used - set(i18n.CATALOG)) == []


def test_the_browser_language_chooses_the_interface():
    assert [i18n.language_of(tag) for tag in ("zh-CN", "zh-Hans-CN", "zh_TW", "ZH", "en-US", "de-DE", "", None)] \
        == ["zh", "zh", "zh", "zh", "en", "en", "en", "en"]


def coded_errors(tmp_path: Path) -> list[SeekframeError]:
    """One of each error a visitor can cause from the app, raised by the code that raises it."""
    errors: list[SeekframeError] = []

    def catch(call, *args) -> None:
        with pytest.raises(SeekframeError) as caught:
            call(*args)
        errors.append(caught.value)

    catch(save_upload, "tool.exe", b"MZ", tmp_path, [".md", ".pdf"])
    catch(save_upload, "empty.md", b"", tmp_path, [".md"])
    catch(save_upload, ".hidden", b"x", tmp_path, [".md"])
    allowed = tmp_path / "allowed"
    (allowed / ".secret").mkdir(parents=True)
    (allowed / "out").symlink_to(tmp_path)
    catch(check_server_path, allowed / "nowhere", [allowed])
    catch(check_server_path, "relative/path", [allowed])
    catch(check_server_path, allowed / ".secret", [allowed])
    catch(check_server_path, tmp_path / "elsewhere", [allowed])
    catch(check_server_path, allowed / "out", [allowed])
    catch(check_server_path, allowed, [])
    catch(require, "viewer", "editor", "delete")
    settings = load_settings({"home": tmp_path / "kb", "auth_trusted_proxies": "10.0.0.1"}, env={})
    catch(identity_from_headers, {}, "10.0.0.1", settings)
    catch(identity_from_headers, {"X-Seekframe-User": "eve@example.com"}, "203.0.113.9", settings)
    catch(check_no_sign_in, "0.0.0.0")
    # What a reader says of a bad upload (shown per file on the Add page).
    from ingest.read import read_file
    from kb.types import Source

    for name, data in (("zero.md", b""), ("download.pdf", b"404 Not Found: the server could not find it\n"),
                       ("garbage.png", bytes(range(256)) * 4), ("binary.md", b"\x00\x01\x02\xff" * 100)):
        (tmp_path / name).write_bytes(data)
        catch(read_file, tmp_path / name, Source(name, str(tmp_path / name), ""), settings)
    # Limits: a text file above KB_TEXT_MAX_BYTES, an image above KB_IMAGE_DECODE_MAX_PIXELS.
    from PIL import Image

    (tmp_path / "long.md").write_text("words " * 400)
    Image.new("RGB", (400, 300), "white").save(tmp_path / "wide.png")
    tight = load_settings({"home": tmp_path / "kb", "text_max_bytes": 1000, "image_decode_max_pixels": 10_000}, env={})
    for name in ("long.md", "wide.png"):
        catch(read_file, tmp_path / name, Source(name, str(tmp_path / name), ""), tight)
    return errors


def test_errors_a_visitor_can_cause_are_translated_and_their_english_is_unchanged(tmp_path):
    errors = coded_errors(tmp_path)
    assert len({err.code for err in errors}) == len(errors), [err.code for err in errors]
    for err in errors:
        assert f"err.{err.code}" in i18n.CATALOG, err.code
        # The catalog's English is the error's own text: the CLI and the English page say the same thing.
        assert i18n.error_text(err, "en") == (err.message, err.fix), err.code
        message, fix = i18n.error_text(err, "zh")
        assert CJK.search(message) and CJK.search(fix), (err.code, message, fix)
    upload = next(err for err in errors if err.code == "upload.unsupported")
    assert isinstance(upload, InputError) and upload.params["path"] == "tool.exe"
    assert i18n.error_text(upload, "zh")[0] == "tool.exe：不支持的文件类型 .exe"


def test_an_error_without_a_translation_shows_its_english_text():
    plain = SeekframeError("the moon is made of cheese", "look again")
    assert i18n.error_text(plain, "zh") == ("the moon is made of cheese", "look again")
    unknown = SeekframeError("a newer error", "its fix", code="not.in.catalog", params={"x": 1})
    assert i18n.error_text(unknown, "zh") == ("a newer error", "its fix")
    assert i18n.error_text(ValueError("not ours"), "zh") == ("not ours", "")


def test_a_refusal_names_the_action_and_roles_in_the_visitors_language():
    with pytest.raises(AccessDenied) as caught:
        require("viewer", "editor", i18n.text("action.delete", "en"))
    assert i18n.error_text(caught.value, "en")[0] == "delete needs the editor role; you are viewer"
    said = i18n.error_text(caught.value, "zh", action=i18n.text("action.delete", "zh"),
                           needed=i18n.word("role", "editor", "zh"), role=i18n.word("role", "viewer", "zh"))
    assert said == ("删除需要编辑者角色；您的角色是查看者", "请管理员把您加入 KB_EDITORS")


def test_every_word_of_the_vocabularies_the_app_shows_is_in_the_catalog():
    from kb.types import FileKind, FileState, JobState, Modality, Outcome, SourceStatus

    groups = {"state": [*JobState, *FileState], "result": [*Outcome, *SourceStatus], "modality": list(Modality),
              "kind": list(FileKind)}
    missing = [f"{group}.{value}" for group, values in groups.items() for value in values
               if f"{group}.{value}" not in i18n.CATALOG]
    assert missing == []
    assert i18n.word("state", FileState.CAPTIONING, "zh") == "生成说明中"


def test_vocabulary_words_fall_back_to_the_word_itself():
    assert i18n.word("state", "done", "zh") == "完成" and i18n.word("state", "done", "en") == "done"
    assert i18n.word("state", "a-new-state", "zh") == "a-new-state"


def test_why_an_engine_runs_is_said_in_either_language(tmp_path):
    from kb.engines import resolve_engine_name

    settings = load_settings({"home": tmp_path, "engine": "ocr"}, env={})
    name, why = resolve_engine_name(settings)
    assert why == "engine 'ocr' chosen by settings" or why.startswith("engine 'ocr' chosen by")
    assert i18n.say(why, "en") == why  # the CLI's sentence, unchanged
    assert i18n.say(why, "zh").startswith("引擎“ocr”由 ")
    assert i18n.say("a sentence with no key", "zh") == "a sentence with no key"


def test_a_job_table_written_before_errors_had_codes_still_opens(tmp_path):
    import sqlite3

    from ingest.jobs import SCHEMA, JobBoard

    old = SCHEMA.replace("    cause TEXT NOT NULL DEFAULT '',  -- the reason's error code and values as JSON "
                         "(kb/i18n.py says it)\n", "")
    assert old != SCHEMA
    with sqlite3.connect(tmp_path / "jobs.sqlite") as db:
        db.executescript(old)
        db.execute("INSERT INTO jobs (label, paths, state, created) VALUES ('old', '[]', 'done', 0)")
        db.execute("INSERT INTO job_files (job_id, position, path, rel, state, reason) "
                   "VALUES (1, 0, '/x/a.pdf', 'a.pdf', 'failed', 'a.pdf: not a readable PDF')")
    board = JobBoard(tmp_path)
    try:
        item = board.jobs()[0].files[0]
        assert (item.reason, item.cause) == ("a.pdf: not a readable PDF", "")
    finally:
        board.close()


def test_answers_written_without_a_model_follow_the_questions_language():
    from kb import prompts

    assert prompts.no_sources("What is the budget?") == "Nothing in the knowledge base matches this question."
    assert prompts.no_sources("预算是多少？") == "知识库中没有与这个问题相符的内容。"
    assert i18n.language_of_text("LinnSequencer 是什么？") == "zh" and i18n.language_of_text("What?") == "en"
