"""The message catalog (kb/i18n.py) and the error codes the web app translates; no Streamlit here."""
from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest

from ingest.jobs import FileStatus, check_server_path
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
    # Video and audio: a cut MP4 (its index is at the end), noise with an MP3 header, a ZIP named .mp4, a silent
    # video named .m4a, sound alone named .mp4.
    write_mp4(tmp_path / "whole.mp4", faststart=False)
    whole = (tmp_path / "whole.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(whole[:len(whole) // 2])
    (tmp_path / "noise.mp3").write_bytes(b"ID3" + bytes(range(256)) * 20)
    with zipfile.ZipFile(tmp_path / "bundle.mp4", "w") as archive:
        archive.writestr("notes.txt", "hello")
    (tmp_path / "silent.m4a").write_bytes(whole)
    write_sound(tmp_path / "sound.mp4")
    for name in ("cut.mp4", "noise.mp3", "bundle.mp4", "silent.m4a", "sound.mp4"):
        catch(read_file, tmp_path / name, Source(name, str(tmp_path / name), ""), settings)
    # The speech engine under KB_ASR=on (it fails the file): a model not on this machine, a folder that is not one.
    from kb.engines.asr import SpeechEngine, locate_model

    (tmp_path / "not-a-model").mkdir()
    catch(locate_model, load_settings({"home": tmp_path / "kb", "asr": "on", "asr_model": "no-such/whisper"}, env={}))
    catch(SpeechEngine, load_settings({"home": tmp_path / "kb", "asr": "on", "asr_model": str(tmp_path / "not-a-model"),
                                       "device": "cpu"}, env={}))
    return errors


def write_mp4(path: Path, faststart: bool, frames: int = 60) -> None:
    """A 6-second 64x48 MPEG-4 video of noise (its index first with `faststart`, so a cut copy still opens)."""
    import av
    import numpy as np

    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(frames):
            picture = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        container.mux(stream.encode(None))


def write_sound(path: Path) -> None:
    """One second of AAC silence in an MP4 container, with no video stream."""
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def test_errors_a_visitor_can_cause_are_translated_and_their_english_is_unchanged(tmp_path):
    errors = coded_errors(tmp_path)
    assert len({err.code for err in errors}) == len(errors), [err.code for err in errors]
    for err in errors:
        assert f"err.{err.code}" in i18n.CATALOG, err.code
        # The catalog's English is the error's own text: the CLI and the English page say the same thing.
        assert i18n.error_text(err, "en") == (err.message, err.fix), err.code
        message, fix = i18n.error_text(err, "zh")
        assert CJK.search(message) and CJK.search(fix), (err.code, message, fix)
    said = {err.code: i18n.error_text(err, "zh") for err in errors}
    assert said["read.not_claimed"] == ("bundle.mp4：这是ZIP 压缩包，不是视频", "请先解压，再导入解压出的文件夹")
    assert said["video.unreadable"][0].startswith("cut.mp4：不是可读取的视频（")
    assert said["audio.no_stream"][0] == "silent.m4a：其中没有音频流"
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


def test_what_a_reader_notes_about_a_file_reaches_the_add_page_in_either_language(tmp_path):
    """A PNG named .mp3 is read as an image with a note; half a video is kept with an error: both are sentences
    of the catalog, and the job table keeps their keys and values for the Add page to say."""
    from PIL import Image

    from ingest.pipeline import FileResult
    from ingest.read import read_file
    from ingest.worker import _apply
    from kb.types import FileState, Outcome, Source

    settings = load_settings({"home": tmp_path / "kb"}, env={})
    Image.new("RGB", (40, 30), "white").save(tmp_path / "photo.mp3", format="PNG")
    write_mp4(tmp_path / "whole.mp4", faststart=True)
    whole = (tmp_path / "whole.mp4").read_bytes()
    (tmp_path / "half.mp4").write_bytes(whole[:len(whole) // 2])
    note = read_file(tmp_path / "photo.mp3", Source("photo.mp3", str(tmp_path / "photo.mp3"), ""), settings).notes[0]
    damaged = read_file(tmp_path / "half.mp4", Source("half.mp4", str(tmp_path / "half.mp4"), ""), settings).errors[0]
    assert note == "this is a PNG image, not an audio file: read as an image"  # the CLI's sentence, unchanged
    assert i18n.say(note, "en") == note and i18n.say(note, "zh") == "这是PNG 图片，不是音频文件：按图片读取"
    assert damaged.startswith("the video is damaged or truncated: ") and "fix: " in damaged
    assert i18n.say(damaged, "en") == damaged
    assert i18n.say(damaged, "zh").startswith("视频已损坏或不完整：") and "解决方法" in i18n.say(damaged, "zh")
    for result, expected in ((FileResult("photo.mp3", Outcome.ADDED, 1, notes=[note]), "这是PNG 图片"),
                             (FileResult("half.mp4", Outcome.PARTIAL, 1, errors=[damaged]), "视频已损坏")):
        item = FileStatus(path=str(tmp_path / result.rel), rel=result.rel, state=FileState.QUEUED)
        _apply(item, result)
        assert item.reason == str(result.errors[0] if result.errors else result.notes[0])  # the CLI's English
        lines = json.loads(item.cause)["said"]  # what pages/add.py says in the visitor's language
        shown = [i18n.say(i18n.said(line["text"], line["code"], **line["params"]), "zh") for line in lines]
        assert shown[0].startswith(expected), shown


def test_an_audio_file_left_out_is_said_in_either_language(open_kb, tmp_path):
    """Speech off, or no speech model under KB_ASR=auto: the note on the Add page follows the visitor's language;
    under KB_ASR=on the missing model fails the file with an error the catalog translates."""
    from ingest.pipeline import Ingestor

    write_sound(tmp_path / "talk.m4a")
    store = open_kb(asr="off")
    note = Ingestor(store.settings, store).run([tmp_path / "talk.m4a"]).results[0].notes[-1]
    assert i18n.say(note, "en") == note == "an audio file, and speech is off (KB_ASR=off): skipped"
    assert i18n.say(note, "zh") == "这是音频文件，而语音识别已关闭（KB_ASR=off）：已跳过"
    store = open_kb(asr="auto", asr_model="no-such/whisper", home=tmp_path / "auto")
    note = Ingestor(store.settings, store).run([tmp_path / "talk.m4a"]).results[0].notes[-1]
    assert i18n.say(note, "zh").startswith("这是音频文件：") and "no-such/whisper" in i18n.say(note, "zh")
    store = open_kb(asr="on", asr_model="no-such/whisper", home=tmp_path / "on")
    failed = Ingestor(store.settings, store).run([tmp_path / "talk.m4a"]).results[0]
    assert failed.cause is not None
    assert i18n.error_text(failed.cause, "zh")[0] == "本机上没有语音模型 'no-such/whisper'（导入时从不下载模型权重）"


def test_what_the_ingest_notes_about_a_file_it_read_is_said_in_either_language(open_kb, tmp_path):
    """A Latin-1 text file and a blank picture are stored with a note each; both notes have their Chinese."""
    from PIL import Image

    from ingest.pipeline import Ingestor

    (tmp_path / "latin.txt").write_bytes("Café crème, déjà vu à Genève.\n".encode("latin-1"))
    Image.new("RGB", (200, 120), "white").save(tmp_path / "blank.png")
    store = open_kb()
    results = {r.rel: r for r in Ingestor(store.settings, store).run([tmp_path]).results}
    encoding, blank = results["latin.txt"].notes[0], results["blank.png"].notes[-1]
    assert encoding.startswith("not UTF-8: read as ") and i18n.say(encoding, "en") == encoding
    assert i18n.say(encoding, "zh").startswith("不是 UTF-8 编码：按 ")
    assert blank.startswith("no text found on it") and i18n.say(blank, "en") == blank
    assert i18n.say(blank, "zh").startswith("上面没有找到文字")
