"""The interface's words in English and Simplified Chinese: one catalog, one lookup (`text`), no Streamlit.

Every key maps to both languages; placeholders are named (`{name}`) and the same in both, and no sentence is
built by joining translated fragments, so a translator sees whole sentences. Counts are shown plural-free
("chunks: 3", "3/5 files"), which reads right in both languages without plural rules.

Errors are translated by their stable `code` (kb/errors.py): `err.<code>` is the message, `err.<code>.fix` the
fix, filled with the error's `params`. An error with no code, or a code not in the catalog, shows its English
text: nothing a user sees is ever lost for want of a translation.
"""
from __future__ import annotations

import re
import string
from typing import Literal, Mapping

Language = Literal["en", "zh"]
LANGUAGES: dict[Language, str] = {"en": "English", "zh": "中文"}
DEFAULT_LANGUAGE: Language = "en"
_HAN = re.compile(r"[\u4e00-\u9fff]")


def language_of(locale: str | None) -> Language:
    """The interface language for a browser's language tag (`zh-CN`, `zh-Hans`, `zh-TW`, `en-US`, None)."""
    return "zh" if (locale or "").lower().replace("_", "-").split("-")[0] == "zh" else DEFAULT_LANGUAGE


def language_of_text(words: str) -> Language:
    """The language a question is written in, as far as the interface's two go: Chinese when it holds Chinese
    characters (a Chinese question often names English products: "LinnSequencer 是什么？"), else English."""
    return "zh" if _HAN.search(words) else DEFAULT_LANGUAGE


def text(key: str, language: Language, **params: object) -> str:
    """The catalog's text for `key` in `language`, its `{placeholders}` filled from `params`.

    An unknown key is a bug in the caller (KeyError), found by the tests that render every page.
    """
    return CATALOG[key][language].format_map(params)


def word(group: str, value: str, language: Language) -> str:
    """A vocabulary word (a job state, a file type, a modality, a role) in `language`; unknown words as they are,
    since they come from data (a newer ingest may write a state this catalog does not know yet)."""
    entry = CATALOG.get(f"{group}.{value}")
    return entry[language] if entry else value


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


class Said(str):
    """English text that also carries its catalog key and values, so an interface can say it in another language;
    everywhere else (logs, the CLI) it is just the string."""

    code: str = ""
    params: dict[str, object]


def said(english: str, code: str, **params: object) -> Said:
    shown = Said(english)
    shown.code, shown.params = code, params
    return shown


def say(shown: str, language: Language) -> str:
    """`shown` in `language` when it is a Said the catalog knows, else as it is."""
    code = getattr(shown, "code", "")
    return text(code, language, **shown.params) if isinstance(shown, Said) and code in CATALOG else str(shown)


def error_text(err: BaseException, language: Language, **overrides: object) -> tuple[str, str]:
    """(message, fix) of an error in `language`: from the catalog by the error's code, else its English text.
    `overrides` replace parameters the caller can say better (an action's translated name, say)."""
    code = getattr(err, "code", "")
    message = str(getattr(err, "message", "") or str(err).split("\n  fix:")[0])
    fix = str(getattr(err, "fix", "") or "")
    if not code or f"err.{code}" not in CATALOG:
        return message, fix
    params: Mapping[str, object] = {**getattr(err, "params", {}), **overrides}
    translated_fix = text(f"err.{code}.fix", language, **params) if f"err.{code}.fix" in CATALOG else fix
    return text(f"err.{code}", language, **params), translated_fix


# The folder checks' fix (ingest/jobs.py FOLDERS_FIX), shared by four errors.
FOLDERS_FIX_EN = ("to let the app read it, add its folder to KB_ALLOWED_FOLDERS (folders separated by ':'; or "
                  "allowed_folders = [...] in seekframe.toml) and restart the app; or ingest it from a shell with "
                  "`python -m ingest PATH` while the app is stopped")
FOLDERS_FIX_ZH = ("如需让应用读取，请把它所在的文件夹加入 KB_ALLOWED_FOLDERS（文件夹以“:”分隔；或在 seekframe.toml 中写"
                  " "
                  "allowed_folders = [...]）并重启应用；或在应用停止时从命令行用 `python -m ingest PATH` 导入")
# The fix for a plain-text file under another type's extension (ingest/read.py), shared by five errors.
TEXT_NOT_FIX: dict[Language, str] = {
    "en": "download or copy it again (a failed download saves its error message); if it is meant as text, rename "
          "it to .txt",
    "zh": "请重新下载或复制（下载失败时保存下来的往往是错误信息）；如果它本来就是文本，请改名为 .txt"}

CATALOG: dict[str, dict[Language, str]] = {
    # app and navigation -------------------------------------------------------------------------------------
    "app.language": {"en": "Language", "zh": "语言"},
    "nav.ask": {"en": "Ask", "zh": "提问"},
    "nav.library": {"en": "Library", "zh": "资料库"},
    "nav.add": {"en": "Add content", "zh": "添加内容"},
    "nav.system": {"en": "System", "zh": "系统"},
    "app.opening": {"en": "Opening the knowledge base…", "zh": "正在打开知识库…"},
    "app.loading_engine": {"en": "Loading the model engine…", "zh": "正在加载模型引擎…"},
    "engine.why.chosen": {"en": "engine '{engine}' chosen by {origin}", "zh": "引擎“{engine}”由 {origin} 指定"},
    "engine.why.auto.transformers": {"en": "engine auto -> 'transformers' (a CUDA GPU is present); set KB_ENGINE=ocr "
                                           "for the model-free reader or KB_ENGINE=openai for a server",
                                     "zh": "引擎 auto -> “transformers”（有 CUDA GPU）；设置 KB_ENGINE=ocr 使用无模型的"
                                           "读取器，"
                                           "或 KB_ENGINE=openai 使用服务器"},
    "engine.why.auto.ocr": {"en": "engine auto -> 'ocr' (no CUDA GPU: RapidOCR reads text, no captions, extractive "
                                  "answers); set KB_ENGINE=transformers to run Qwen3-VL on the CPU (slow) or "
                                  "KB_ENGINE=openai with KB_OPENAI_BASE_URL for a vLLM/SGLang server",
                            "zh": "引擎 auto -> “ocr”（没有 CUDA GPU：RapidOCR 读取文字，不写图片说明，回答为原文摘录）"
                                  "；设置 "
                                  "KB_ENGINE=transformers 可在 CPU 上运行 Qwen3-VL（较慢），或设置 KB_ENGINE=openai 并"
                                  "配合 "
                                  "KB_OPENAI_BASE_URL 使用 vLLM/SGLang 服务器"},
    "answer.extractive_heading": {"en": "The best matching passages (the ocr engine quotes; it does not write "
                                        "answers):",
                                  "zh": "最相关的段落（ocr 引擎只摘录原文，不撰写回答）："},
    "engine.why.offline": {"en": "OFFLINE PROFILE: engine auto -> 'ocr': the {engine} engine could not load "
                                 "({problem}); RapidOCR reads text, no captions, extractive answers. Fix: {fix}",
                           "zh": "离线配置：引擎 auto -> “ocr”：{engine} 引擎无法加载（{problem}）；"
                                 "由 RapidOCR 读取文字，不写图片说明，回答为原文摘录。解决方法：{fix}"},
    "answer.no_sources": {"en": "Nothing in the knowledge base matches this question.",
                          "zh": "知识库中没有与这个问题相符的内容。"},
    "answer.not_in_sources": {"en": "The knowledge base does not answer this: no source mentions {names}. The "
                                    "closest passage ({where}) is about something else, so it is not quoted.",
                              "zh": "知识库无法回答这个问题：没有任何来源提到 {names}。最接近的段落（{where}）"
                                    "讲的是别的内容，因此不引用。"},
    "app.how_to_fix": {"en": "How to fix:", "zh": "解决方法："},
    # sign-in ------------------------------------------------------------------------------------------------
    "access.sign_in_intro": {"en": "Sign in to ask questions of your team's knowledge base.",
                             "zh": "登录后即可向团队的知识库提问。"},
    "access.sign_in": {"en": "Sign in", "zh": "登录"},
    "access.sign_out": {"en": "Sign out", "zh": "退出登录"},
    "access.no_sign_in": {"en": "No sign-in: single-user mode, reachable from this machine only (KB_AUTH).",
                          "zh": "未启用登录：单用户模式，仅本机可访问（KB_AUTH）。"},
    "access.local_user": {"en": "local user", "zh": "本机用户"},
    "access.no_role": {"en": "{email} is signed in but has no role in this knowledge base.",
                       "zh": "{email} 已登录，但在此知识库中没有角色。"},
    "access.no_role_fix": {"en": "Ask an admin to add you to KB_VIEWERS, KB_EDITORS or KB_ADMINS.",
                           "zh": "请管理员把您加入 KB_VIEWERS、KB_EDITORS 或 KB_ADMINS。"},
    "access.inbox": {"en": "the inbox folder", "zh": "收件箱文件夹"},
    "access.signed_in_as": {"en": "Signed in as {name} · {role}", "zh": "当前用户：{name} · {role}"},
    "action.add_content": {"en": "adding content", "zh": "添加内容"},
    "action.read_folders": {"en": "reading server folders", "zh": "读取服务器上的文件夹"},
    "action.system_page": {"en": "the System page", "zh": "系统页面"},
    "action.delete": {"en": "delete", "zh": "删除"},
    "action.reindex": {"en": "re-index", "zh": "重新索引"},
    "access.not_allowed": {"en": "not allowed in", "zh": "无权访问"},
    "role.viewer": {"en": "viewer", "zh": "查看者"},
    "role.editor": {"en": "editor", "zh": "编辑者"},
    "role.admin": {"en": "admin", "zh": "管理员"},
    # shared widgets -----------------------------------------------------------------------------------------
    "empty.info": {"en": "The knowledge base is empty. Add files on the **Add content** page (upload, or a folder "
                         "on the server), or from a shell: `python -m ingest PATH...` while the app is stopped. "
                         "`make run` ingests the sample library.",
                   "zh": "知识库是空的。请在 **添加内容** 页面添加文件（上传，或服务器上的文件夹），或在应用停止时从命"
                         "令行运行 "
                         "`python -m ingest PATH...`。`make run` 会导入示例资料。"},
    "widget.pdf_gone": {"en": "The PDF is no longer at its ingest path, so the page cannot be shown.",
                        "zh": "PDF 已不在导入时的位置，无法显示该页。"},
    "widget.video_gone": {"en": "The video is no longer at its ingest path, so it cannot be played.",
                          "zh": "视频已不在导入时的位置，无法播放。"},
    "widget.audio_gone": {"en": "The audio file is no longer at its ingest path, so it cannot be played.",
                          "zh": "音频文件已不在导入时的位置，无法播放。"},
    "widget.page": {"en": "page {page}", "zh": "第 {page} 页"},
    "widget.page_highlighted": {"en": "page {page} · cited text highlighted", "zh": "第 {page} 页 · 已高亮引用文字"},
    "cite.page": {"en": "{name} p. {page}", "zh": "{name} 第 {page} 页"},
    # ask ----------------------------------------------------------------------------------------------------
    "ask.title": {"en": "Ask your knowledge base", "zh": "向知识库提问"},
    "ask.offline_embedder": {"en": "Offline profile: the bundled English embedding model is in use ({reason}).",
                             "zh": "离线配置：正在使用内置的英文向量模型（{reason}）。"},
    "ask.filters": {"en": "Filters", "zh": "筛选"},
    "ask.sources": {"en": "Sources", "zh": "来源"},
    "ask.all_sources": {"en": "all sources", "zh": "全部来源"},
    "ask.modality": {"en": "Modality", "zh": "类型"},
    "ask.all_modalities": {"en": "documents, images and video", "zh": "文档、图片和视频"},
    "ask.time_range": {"en": "Video and audio time range (seconds)", "zh": "视频和音频的时间范围（秒）"},
    "ask.generation": {"en": "Generation", "zh": "生成设置"},
    "ask.max_tokens": {"en": "Max new tokens", "zh": "最大生成 token 数"},
    "ask.temperature": {"en": "Temperature (0 = greedy)", "zh": "温度（0 = 贪心解码）"},
    "ask.top_p": {"en": "Top-p", "zh": "Top-p"},
    "ask.top_p_help": {"en": "used when sampling (temperature above 0)", "zh": "采样时使用（温度大于 0）"},
    "ask.new_conversation": {"en": "New conversation", "zh": "新对话"},
    "ask.your_conversations": {"en": "Your conversations", "zh": "您的对话"},
    "ask.engine": {"en": "Engine: {engine} · model {model} · {device}. {why}",
                   "zh": "引擎：{engine} · 模型 {model} · {device}。{why}"},
    "ask.engine_loading": {"en": "Loading the model engine in the background… you can type a question meanwhile.",
                           "zh": "模型引擎正在后台加载……您可以先输入问题。"},
    "ask.regenerate": {"en": "Regenerate", "zh": "重新生成"},
    "ask.regenerate_help": {"en": "this answer was stored for the same question, filters and settings: write it "
                                  "anew",
                            "zh": "这是相同问题、筛选和设置下保存的回答：重新生成一次"},
    "ask.cached_timing": {"en": "cached answer (stored {when}) · {engine} · {model} · sources: {sources}",
                          "zh": "缓存的回答（保存于 {when}）· {engine} · {model} · 来源数：{sources}"},
    "ask.timing": {"en": "{engine} · {model} · retrieval {retrieval} s · generation {generation} s · "
                         "sources: {sources}",
                   "zh": "{engine} · {model} · 检索 {retrieval} s · 生成 {generation} s · 来源数：{sources}"},
    "ask.placeholder": {"en": "Ask a question about your documents, images, videos and recordings",
                        "zh": "就您的文档、图片、视频和录音提问"},
    "group.documents": {"en": "documents", "zh": "文档"},
    "group.images": {"en": "images", "zh": "图片"},
    "group.video": {"en": "video", "zh": "视频"},
    "group.audio": {"en": "audio", "zh": "音频"},
    # add content --------------------------------------------------------------------------------------------
    "add.title": {"en": "Add content", "zh": "添加内容"},
    "add.intro": {"en": "Seekframe reads {extensions}. Files are ingested in the background by the ingest worker: "
                        "you can leave this page, or close the browser, and come back. Each upload is saved under "
                        "{folder}, in a folder named after its content, so files with the same name never replace "
                        "each other.",
                  "zh": "Seekframe 可读取 {extensions}。文件由导入进程在后台导入：您可以离开此页面或关闭浏览器，稍后再"
                        "回来。"
                        "每个上传的文件保存在 {folder} 下以其内容命名的文件夹中，因此同名文件不会互相覆盖。"},
    "add.limit": {"en": "Upload limit: {limit} MB per file. Raise it when starting the app, e.g. "
                        "`streamlit run streamlit_app.py --server.maxUploadSize 2000`, or set `maxUploadSize` under "
                        "`[server]` in `.streamlit/config.toml`. For very large files, give a folder on the server "
                        "instead.",
                  "zh": "上传上限：每个文件 {limit} MB。启动应用时可调高，例如 "
                        "`streamlit run streamlit_app.py --server.maxUploadSize 2000`，或在 `.streamlit/config.toml` 的"
                        " "
                        "`[server]` 下设置 `maxUploadSize`。非常大的文件请改用服务器上的文件夹。"},
    "add.ocr_first": {"en": "OCR-first: text only, no captions of figures and photos (faster)",
                      "zh": "OCR 优先：只读文字，不为图表和照片写说明（更快）"},
    "add.ocr_first_help": {"en": "Pages, photos and video frames are still read for their text; what a figure or "
                                 "photo shows is not described. Re-index a source later to add its captions.",
                           "zh": "页面、照片和视频帧中的文字照常读取，但不描述图表或照片的内容。之后可重新索引该来源以"
                                 "补上说明。"},
    "add.tab_upload": {"en": "Upload files", "zh": "上传文件"},
    "add.tab_folder": {"en": "Folder on the server", "zh": "服务器上的文件夹"},
    "add.files": {"en": "Files to add", "zh": "要添加的文件"},
    "add.ingest_uploads": {"en": "Ingest uploaded files", "zh": "导入上传的文件"},
    "add.upload_label": {"en": "upload of {count} file(s)", "zh": "上传 {count} 个文件"},
    "add.folders_admin_only": {"en": "Reading folders on the server is for admins only.",
                               "zh": "只有管理员可以读取服务器上的文件夹。"},
    "add.folders_off": {"en": "Reading folders on the server is off: anyone who can open this app could read the "
                              "server's files through it. To allow it, set `KB_ALLOWED_FOLDERS` to the folders the "
                              "app may read (absolute paths separated by `:`, or `allowed_folders = [...]` in "
                              "`seekframe.toml`) and restart the app. Only files under those folders are read; "
                              "hidden files and links that lead out of them are not.",
                        "zh": "读取服务器文件夹的功能已关闭：否则任何能打开此应用的人都能借它读取服务器上的文件。"
                              "如需开启，请把 `KB_ALLOWED_FOLDERS` 设为应用可读取的文件夹（绝对路径，以 `:` 分隔，或在 "
                              "`seekframe.toml` 中写 `allowed_folders = [...]`）并重启应用。只读取这些文件夹下的文件；"
                              "隐藏文件以及指向外部的链接不会被读取。"},
    "add.allowed_folders": {"en": "Allowed folders: {folders} (`KB_ALLOWED_FOLDERS`). Hidden files and links that "
                                  "lead out of them are not read.",
                            "zh": "允许的文件夹：{folders}（`KB_ALLOWED_FOLDERS`）。隐藏文件以及指向外部的链接不会被读"
                                  "取。"},
    "add.folder": {"en": "Folder or file path on the server", "zh": "服务器上的文件夹或文件路径"},
    "add.folder_placeholder": {"en": "{folder}/...  (walked recursively)", "zh": "{folder}/...（递归读取）"},
    "add.ingest_folder": {"en": "Ingest folder", "zh": "导入文件夹"},
    "add.reindex_label": {"en": "re-index {name}", "zh": "重新索引 {name}"},
    "add.inbox_label": {"en": "inbox: {count} file(s)", "zh": "收件箱：{count} 个文件"},
    "add.job_by": {"en": "{label} · by {owner}", "zh": "{label} · 提交者 {owner}"},
    "add.job_line": {"en": "**{label}** · {state} · {done}/{total} files · {seconds} s",
                     "zh": "**{label}** · {state} · {done}/{total} 个文件 · {seconds} s"},
    "add.job_line_pages": {"en": "**{label}** · {state} · {done}/{total} files · {seconds} s · pages read by the "
                                 "engine: {pages}",
                           "zh": "**{label}** · {state} · {done}/{total} 个文件 · {seconds} s · 引擎读取的页数：{pages}"
                                 ""},
    "add.cancel": {"en": "Cancel", "zh": "取消"},
    "add.cancel_help": {"en": "Stops before the next file or page batch; files already stored stay.",
                        "zh": "在下一个文件或下一批页面之前停止；已保存的文件会保留。"},
    "add.col_file": {"en": "file", "zh": "文件"},
    "add.col_status": {"en": "status", "zh": "状态"},
    "add.col_chunks": {"en": "chunks", "zh": "片段数"},
    "add.col_result": {"en": "result", "zh": "结果"},
    "add.col_reason": {"en": "reason", "zh": "原因"},
    "add.file_failed": {"en": "{file}: {reason}", "zh": "{file}：{reason}"},
    "add.no_jobs": {"en": "No ingest jobs yet.", "zh": "还没有导入任务。"},
    "add.no_worker": {"en": "Jobs are waiting, but no ingest worker has reported in the last minute: start one with "
                            "`python -m ingest --worker` (same KB_HOME and KB_CHROMA_URL as this app).",
                      "zh": "有任务在等待，但最近一分钟内没有导入进程报到：请用 `python -m ingest --worker` 启动一个"
                            "（与本应用使用相同的 KB_HOME 和 KB_CHROMA_URL）。"},
    "add.jobs": {"en": "Ingest jobs", "zh": "导入任务"},
    # job and file vocabularies (ingest/jobs.py, ingest/pipeline.py) -----------------------------------------
    "state.queued": {"en": "queued", "zh": "排队中"},
    "state.running": {"en": "running", "zh": "进行中"},
    "state.reading": {"en": "reading", "zh": "读取中"},
    "state.OCR": {"en": "OCR", "zh": "文字识别中"},
    "state.captioning": {"en": "captioning", "zh": "生成说明中"},
    "state.video": {"en": "video", "zh": "处理视频中"},
    "state.transcribing": {"en": "transcribing", "zh": "转写语音中"},
    "state.embedding": {"en": "embedding", "zh": "向量化中"},
    "state.done": {"en": "done", "zh": "完成"},
    "state.failed": {"en": "failed", "zh": "失败"},
    "state.cancelled": {"en": "cancelled", "zh": "已取消"},
    "state.skipped": {"en": "skipped", "zh": "已跳过"},
    "result.added": {"en": "added", "zh": "新增"},
    "result.updated": {"en": "updated", "zh": "已更新"},
    "result.copied": {"en": "copied", "zh": "已复制"},
    "result.renamed": {"en": "renamed", "zh": "已改名"},
    "result.skipped": {"en": "skipped", "zh": "未变，跳过"},
    "result.partial": {"en": "partial", "zh": "部分读取"},
    "result.empty": {"en": "empty", "zh": "无内容"},
    "result.failed": {"en": "failed", "zh": "失败"},
    "result.ok": {"en": "ok", "zh": "正常"},
    "result.pruned": {"en": "pruned", "zh": "已移除"},
    "result.unsupported": {"en": "unsupported", "zh": "不支持"},
    "result.hidden": {"en": "hidden", "zh": "隐藏"},
    "result.link": {"en": "link", "zh": "链接"},
    "reason.unchanged since the last ingest": {"en": "unchanged since the last ingest", "zh": "自上次导入后未变"},
    "reason.cancelled": {"en": "cancelled", "zh": "已取消"},
    "reason.stored before the cancel": {"en": "stored before the cancel", "zh": "取消前已保存"},
    "reason.cancelled before it started": {"en": "cancelled before it started", "zh": "开始前已取消"},
    "reason.no supported files found": {"en": "no supported files found", "zh": "没有找到支持的文件"},
    "reason.the ingest did not report on this file": {"en": "the ingest did not report on this file",
                                                      "zh": "导入过程没有报告此文件的结果"},
    "engine.none": {"en": "none", "zh": "无"},
    "kind.pdf": {"en": "pdf", "zh": "PDF"},
    "kind.text": {"en": "text", "zh": "文本"},
    "kind.image": {"en": "image", "zh": "图片"},
    "kind.video": {"en": "video", "zh": "视频"},
    "kind.audio": {"en": "audio", "zh": "音频"},
    "modality.pdf_text": {"en": "pdf_text", "zh": "PDF 文字"},
    "modality.pdf_ocr": {"en": "pdf_ocr", "zh": "PDF 识别文字"},
    "modality.pdf_figure": {"en": "pdf_figure", "zh": "PDF 图表"},
    "modality.text": {"en": "text", "zh": "文本"},
    "modality.image_ocr": {"en": "image_ocr", "zh": "图片文字"},
    "modality.image_caption": {"en": "image_caption", "zh": "图片说明"},
    "modality.video_segment": {"en": "video_segment", "zh": "视频片段"},
    "modality.speech": {"en": "speech", "zh": "语音"},
    # library ------------------------------------------------------------------------------------------------
    "lib.title": {"en": "Library", "zh": "资料库"},
    "lib.search": {"en": "Search sources", "zh": "搜索来源"},
    "lib.search_placeholder": {"en": "name, type, status or model", "zh": "名称、类型、状态或模型"},
    "lib.sort": {"en": "Sort by", "zh": "排序"},
    "sort.name": {"en": "name", "zh": "名称"},
    "sort.newest first": {"en": "newest first", "zh": "最新在前"},
    "sort.most chunks": {"en": "most chunks", "zh": "片段最多"},
    "sort.type": {"en": "type", "zh": "类型"},
    "lib.col_source": {"en": "source", "zh": "来源"},
    "lib.col_type": {"en": "type", "zh": "类型"},
    "lib.col_extent": {"en": "pages / duration", "zh": "页数 / 时长"},
    "lib.col_chunks": {"en": "chunks", "zh": "片段数"},
    "lib.col_status": {"en": "status", "zh": "状态"},
    "lib.col_ingested": {"en": "ingested at", "zh": "导入时间"},
    "lib.col_engine": {"en": "engine", "zh": "引擎"},
    "lib.col_model": {"en": "model", "zh": "模型"},
    "lib.col_problems": {"en": "problems", "zh": "问题数"},
    "lib.pages": {"en": "pages: {count}", "zh": "{count} 页"},
    "lib.counts": {"en": "{shown} of {total} sources · chunks: {chunks}",
                   "zh": "显示 {shown} / {total} 个来源 · 片段数：{chunks}"},
    "lib.open": {"en": "Open a source", "zh": "打开来源"},
    "lib.refused": {"en": "Refused: {action} needs the editor role; you are {role}.",
                    "zh": "已拒绝：{action}需要编辑者角色；您的角色是{role}。"},
    "lib.deleted": {"en": "Deleted {name} from the knowledge base (chunks: {chunks}); the file itself stays on disk.",
                    "zh": "已从知识库删除 {name}（片段数：{chunks}）；文件本身仍保留在磁盘上。"},
    "lib.reindexing": {"en": "Re-indexing {name} in the background: follow it on the Add content page.",
                       "zh": "正在后台重新索引 {name}：可在“添加内容”页面查看进度。"},
    "lib.details": {"en": "{kind} · {extent} · chunks: {chunks} · status {status} · engine {engine} {model} · {path}",
                    "zh": "{kind} · {extent} · 片段数：{chunks} · 状态 {status} · 引擎 {engine} {model} · {path}"},
    "lib.single_image": {"en": "single image", "zh": "单张图片"},
    "lib.reindex": {"en": "Re-index", "zh": "重新索引"},
    "lib.reindex_help": {"en": "Read the file again with the current engine and settings, even if it is unchanged.",
                         "zh": "用当前的引擎和设置重新读取文件，即使它没有变化。"},
    "lib.reindex_help_viewer": {"en": "Read the file again with the current engine and settings, even if it is "
                                      "unchanged. (editors only)",
                                "zh": "用当前的引擎和设置重新读取文件，即使它没有变化。（仅限编辑者）"},
    "lib.delete": {"en": "Delete", "zh": "删除"},
    "lib.delete_help": {"en": "Remove the source and its chunks from the knowledge base (the file stays on disk); "
                              "asks first.",
                        "zh": "从知识库中移除该来源及其片段（文件仍保留在磁盘上）；会先确认。"},
    "lib.delete_help_viewer": {"en": "Remove the source and its chunks from the knowledge base (the file stays on "
                                     "disk); asks first. Editors only: as a viewer you are refused.",
                               "zh": "从知识库中移除该来源及其片段（文件仍保留在磁盘上）；会先确认。仅限编辑者：查看者"
                                     "会被拒绝。"},
    "lib.outline": {"en": "Outline", "zh": "大纲"},
    "lib.outline_help": {"en": "Chapters with timestamps (video) or sections with pages",
                         "zh": "带时间戳的章节（视频）或带页码的小节"},
    "lib.writing_outline": {"en": "Writing the outline…", "zh": "正在生成大纲…"},
    "lib.no_outline": {"en": "No outline: the source has no text.", "zh": "没有大纲：该来源没有文字。"},
    "lib.confirm_delete": {"en": "Delete {name} (chunks: {chunks}) from the knowledge base? Its text can no longer "
                                 "be found or cited. The file stays on disk at {path}.",
                           "zh": "从知识库删除 {name}（片段数：{chunks}）？删除后其内容将无法再被检索或引用。文件仍保留"
                                 "在磁盘上："
                                 "{path}。"},
    "lib.yes_delete": {"en": "Yes, delete {name}", "zh": "是的，删除 {name}"},
    "lib.keep": {"en": "Keep it", "zh": "保留"},
    "lib.segments": {"en": "Segments: {count}; ▶ plays from the start of a segment.",
                     "zh": "片段数：{count}；▶ 从片段开头播放。"},
    "lib.from_page": {"en": "From page", "zh": "起始页"},
    "lib.page_modality": {"en": "page {page} · {modality}", "zh": "第 {page} 页 · {modality}"},
    "lib.image_text": {"en": "Text in the image (OCR)", "zh": "图片中的文字（OCR）"},
    "lib.caption": {"en": "Caption", "zh": "图片说明"},
    "lib.no_caption": {"en": "(none: the engine that read this image does not write captions)",
                       "zh": "（无：读取此图片的引擎不写图片说明）"},
    "lib.no_text": {"en": "(no text found)", "zh": "（未找到文字）"},
    # system -------------------------------------------------------------------------------------------------
    "sys.title": {"en": "System", "zh": "系统"},
    "sys.engine": {"en": "Engine", "zh": "引擎"},
    "sys.col_engine": {"en": "engine", "zh": "引擎"},
    "sys.col_model": {"en": "model", "zh": "模型"},
    "sys.col_device": {"en": "device", "zh": "设备"},
    "sys.col_captions": {"en": "captions", "zh": "图片说明"},
    "sys.col_answers": {"en": "written answers", "zh": "生成式回答"},
    "sys.engine_loading": {"en": "The model engine is still loading in the background.",
                           "zh": "模型引擎仍在后台加载。"},
    "sys.embedder": {"en": "Embedding model: {name}", "zh": "向量模型：{name}"},
    "sys.embedder_fallback": {"en": "Embedding model: {name} (fallback: {reason})",
                              "zh": "向量模型：{name}（备用：{reason}）"},
    "sys.gpu": {"en": "GPU", "zh": "GPU"},
    "sys.col_gpu": {"en": "gpu", "zh": "GPU"},
    "sys.col_name": {"en": "name", "zh": "名称"},
    "sys.col_memory_used": {"en": "memory used", "zh": "已用显存"},
    "sys.col_memory_total": {"en": "memory total", "zh": "总显存"},
    "sys.col_utilization": {"en": "utilization", "zh": "利用率"},
    "sys.no_gpu": {"en": "no GPU (nvidia-smi not found or no NVIDIA device): models run on the CPU",
                   "zh": "没有 GPU（未找到 nvidia-smi 或没有 NVIDIA 设备）：模型在 CPU 上运行"},
    "sys.kb": {"en": "Knowledge base", "zh": "知识库"},
    "sys.sources": {"en": "Sources", "zh": "来源"},
    "sys.chunks": {"en": "Chunks", "zh": "片段"},
    "sys.on_disk": {"en": "On disk", "zh": "磁盘占用"},
    "sys.uploads": {"en": "Uploads", "zh": "上传文件"},
    "sys.home_server": {"en": "Home: {home} · Chroma server {url}", "zh": "数据目录：{home} · Chroma 服务器 {url}"},
    "sys.home_embedded": {"en": "Home: {home} · embedded Chroma store, owned by this app process",
                          "zh": "数据目录：{home} · 内嵌的 Chroma 存储，由本应用进程独占"},
    "sys.cache": {"en": "Answer cache", "zh": "回答缓存"},
    "sys.hit_rate": {"en": "Hit rate", "zh": "命中率"},
    "sys.hit_rate_help": {"en": "questions answered from the cache, of all asked", "zh": "所有提问中由缓存回答的比例"},
    "sys.served": {"en": "Served / asked", "zh": "缓存回答 / 提问"},
    "sys.stored": {"en": "Stored answers", "zh": "已存回答"},
    "sys.cache_note": {"en": "An identical question with the same filters and generation settings, on unchanged "
                             "sources, is answered at once; any ingest, delete or re-index of a source in its scope "
                             "makes it answer anew.",
                       "zh": "相同的问题在相同的筛选和生成设置下、来源未变时会立即作答；其范围内任何来源的导入、删除或"
                             "重新索引"
                             "都会使它重新作答。"},
    "sys.last_ingests": {"en": "Last ingests", "zh": "最近的导入"},
    "sys.col_job": {"en": "job", "zh": "任务"},
    "sys.col_state": {"en": "state", "zh": "状态"},
    "sys.col_files": {"en": "files", "zh": "文件数"},
    "sys.col_pages": {"en": "pages read", "zh": "已读页数"},
    "sys.col_seconds": {"en": "seconds", "zh": "秒"},
    "sys.col_files_min": {"en": "files/min", "zh": "文件/分钟"},
    "sys.col_pages_s": {"en": "pages/s", "zh": "页/秒"},
    "sys.no_ingests": {"en": "No ingest has run in this app session yet.", "zh": "本次运行中还没有执行过导入。"},
    "sys.config": {"en": "Effective configuration", "zh": "生效的配置"},
    "sys.config_note": {"en": "defaults < seekframe.toml < KB_* environment < flags; secrets are masked",
                        "zh": "默认值 < seekframe.toml < KB_* 环境变量 < 命令行参数；密钥已隐藏"},
    "sys.col_setting": {"en": "setting", "zh": "设置项"},
    "sys.col_value": {"en": "value", "zh": "值"},
    "sys.col_from": {"en": "from", "zh": "来自"},
    "origin.default": {"en": "default", "zh": "默认值"},
    # errors a user can meet in the app (codes set where they are raised) ------------------------------------
    "err.upload.no_name": {"en": "{path}: the file has no usable name", "zh": "{path}：文件名不可用"},
    "err.upload.no_name.fix": {"en": "rename it and upload it again", "zh": "请重命名后再上传"},
    "err.upload.unsupported": {"en": "{path}: unsupported file type {suffix}", "zh": "{path}：不支持的文件类型 {suffix}"
                                                                                     ""},
    "err.upload.unsupported.fix": {"en": "Seekframe reads {extensions}", "zh": "Seekframe 可读取 {extensions}"},
    "err.upload.empty": {"en": "{path}: the file is empty (0 bytes)", "zh": "{path}：文件是空的（0 字节）"},
    "err.upload.empty.fix": {"en": "upload the complete file", "zh": "请上传完整的文件"},
    "err.folder.none_allowed": {"en": "{path}: the app may not read folders on the server (no allowed folders are "
                                      "set)",
                                "zh": "{path}：本应用不能读取服务器上的文件夹（未设置允许的文件夹）"},
    "err.folder.off": {"en": "{path}: reading folders on the server is off in this app (KB_ALLOWED_FOLDERS is not "
                             "set)",
                       "zh": "{path}：本应用已关闭读取服务器文件夹（未设置 KB_ALLOWED_FOLDERS）"},
    "err.folder.not_absolute": {"en": "{path}: not an absolute path", "zh": "{path}：不是绝对路径"},
    "err.folder.not_absolute.fix": {"en": "give the full path, starting with /", "zh": "请给出以 / 开头的完整路径"},
    "err.folder.hidden": {"en": "{path}: '{hidden}' is hidden: hidden files and folders are not read from the app",
                          "zh": "{path}：“{hidden}”是隐藏的：应用不读取隐藏的文件和文件夹"},
    "err.folder.hidden.fix": {"en": "rename it, or ingest it from a shell with `python -m ingest PATH`",
                              "zh": "请重命名，或在命令行用 `python -m ingest PATH` 导入"},
    "err.folder.outside": {"en": "{path}: outside the folders the app may read ({allowed})",
                           "zh": "{path}：不在应用可读取的文件夹内（{allowed}）"},
    "err.folder.missing": {"en": "{path}: no such file or folder on the server",
                           "zh": "{path}：服务器上没有这个文件或文件夹"},
    "err.folder.missing.fix": {"en": "give an absolute path that the app process can read",
                               "zh": "请给出应用进程能读取的绝对路径"},
    "err.source.unknown": {"en": "{path} is not a source in the knowledge base", "zh": "{path} 不是知识库中的来源"},
    "err.source.unknown.fix": {"en": "pick a source from the library", "zh": "请从资料库中选择一个来源"},
    "err.source.gone": {"en": "{path} is no longer on disk, so it cannot be re-indexed",
                        "zh": "{path} 已不在磁盘上，无法重新索引"},
    "err.job.unknown": {"en": "there is no ingest job {job}", "zh": "没有编号为 {job} 的导入任务"},
    "err.job.unknown.fix": {"en": "pick a job from the list", "zh": "请从列表中选择一个任务"},
    "err.conversation.unknown": {"en": "you have no conversation {conversation}", "zh": "您没有编号为 {conversation} 的"
                                                                                        "对话"},
    "err.conversation.unknown.fix": {"en": "pick one of yours, or start a new one", "zh": "请选择您自己的对话，或开始新"
                                                                                          "对话"},
    "err.access.role": {"en": "{action} needs the {needed} role; you are {role}",
                        "zh": "{action}需要{needed}角色；您的角色是{role}"},
    "err.access.role.fix": {"en": "ask an admin to add you to {setting}", "zh": "请管理员把您加入 {setting}"},
    "err.access.no_header": {"en": "no {header} header: this app expects to be reached through its sign-in proxy",
                             "zh": "缺少 {header} 请求头：本应用应通过其登录代理访问"},
    "err.access.no_header.fix": {"en": "open the team's address, not the app's port",
                                 "zh": "请打开团队的访问地址，而不是应用的端口"},
    "err.access.untrusted": {"en": "{header} came from {address}, which is not a trusted proxy, and without the "
                                   "shared secret: refused",
                             "zh": "{header} 来自 {address}，它不是受信任的代理，也没有共享密钥：已拒绝"},
    "err.access.untrusted.fix": {"en": "set KB_AUTH_TRUSTED_PROXIES to the proxy's address, or KB_AUTH_HEADER_SECRET "
                                       "on both",
                                 "zh": "把 KB_AUTH_TRUSTED_PROXIES 设为代理的地址，或在两端都设置 KB_AUTH_HEADER_SECRET"
                                       ""},
    "err.access.open_no_sign_in": {"en": "no sign-in (KB_AUTH=none, or auto with no [auth] provider) while the app "
                                         "listens on {address}: anyone who reaches it could delete the library",
                                   "zh": "未启用登录（KB_AUTH=none，或 auto 但没有 [auth] 提供方），而应用监听在 {addre"
                                         "ss}："
                                         "任何能访问它的人都可以删除资料"},
    "err.access.open_no_sign_in.fix": {"en": "listen on 127.0.0.1 only (server.address), or set KB_AUTH=oidc with a "
                                             "provider in .streamlit/secrets.toml, or KB_AUTH=header behind an auth "
                                             "proxy",
                                       "zh": "只监听 127.0.0.1（server.address），或设置 KB_AUTH=oidc 并在 "
                                             ".streamlit/secrets.toml 中配置提供方，或在登录代理之后使用 KB_AUTH=header"
                                             ""},
    "err.store.locked": {"en": "the knowledge base at {folder} is open in another process (pid {pid})",
                         "zh": "位于 {folder} 的知识库已被另一个进程打开（pid {pid}）"},
    "err.engine.timeout": {"en": "the model server at {url} did not answer in time",
                           "zh": "{url} 的模型服务器没有及时响应"},
    "err.engine.unreachable": {"en": "cannot reach the model server at {url} ({detail})",
                               "zh": "无法连接 {url} 的模型服务器（{detail}）"},
    "err.engine.failing": {"en": "the model server at {url} keeps failing ({status}: {detail})",
                           "zh": "{url} 的模型服务器持续出错（{status}：{detail}）"},
    "err.folder.leads_outside": {"en": "{path}: it leads to {target}, outside the folders the app may read ({allowed})",
                                 "zh": "{path}：它指向 {target}，不在应用可读取的文件夹内（{allowed}）"},
    "err.source.gone.fix": {"en": "put the file back at that path, or delete the source from the library",
                            "zh": "请把文件放回原路径，或从资料库中删除该来源"},
    "err.store.locked.fix": {"en": "stop that process (the app or another ingest), or run a Chroma server "
                                   "(`chroma run --path {folder} --port 8000`) and set "
                                   "KB_CHROMA_URL=http://localhost:8000 in every process that uses this knowledge base",
                             "zh": "请停止那个进程（应用或另一个导入），或运行 Chroma 服务器"
                                   "（`chroma run --path {folder} --port 8000`），并在每个使用此知识库的进程中设置 "
                                   "KB_CHROMA_URL=http://localhost:8000"},
    "err.engine.timeout.fix": {"en": "check the server's load and log; lower KB_CONCURRENCY or KB_BATCH_SIZE",
                               "zh": "请检查服务器的负载和日志；调低 KB_CONCURRENCY 或 KB_BATCH_SIZE"},
    "err.engine.unreachable.fix": {"en": "start a server, e.g. `vllm serve Qwen/Qwen3-VL-4B-Instruct "
                                         "--trust-request-mm-kwargs --port 8000` and set "
                                         "KB_OPENAI_BASE_URL=http://localhost:8000/v1, or set KB_ENGINE=ocr to index "
                                         "without a model",
                                   "zh": "请启动一个服务器，例如 `vllm serve Qwen/Qwen3-VL-4B-Instruct "
                                         "--trust-request-mm-kwargs --port 8000`，并设置 "
                                         "KB_OPENAI_BASE_URL=http://localhost:8000/v1；或设置 KB_ENGINE=ocr，不用模型建"
                                         "立索引"},
    "err.engine.failing.fix": {"en": "read the server's log; lower KB_CONCURRENCY if it is overloaded",
                               "zh": "请查看服务器日志；若负载过高，请调低 KB_CONCURRENCY"},
    "err.folder.off.fix": {"en": FOLDERS_FIX_EN, "zh": FOLDERS_FIX_ZH},
    "err.folder.none_allowed.fix": {"en": FOLDERS_FIX_EN, "zh": FOLDERS_FIX_ZH},
    "err.folder.outside.fix": {"en": FOLDERS_FIX_EN, "zh": FOLDERS_FIX_ZH},
    "err.folder.leads_outside.fix": {"en": FOLDERS_FIX_EN, "zh": FOLDERS_FIX_ZH},
    # what an ingest reader says about a file (shown per file on the Add page) -----------------------------
    "err.read.empty": {"en": "{path}: the file is empty (0 bytes)", "zh": "{path}：文件是空的（0 字节）"},
    "err.read.empty.fix": {"en": "copy or download it again", "zh": "请重新复制或下载"},
    "err.read.text_not_pdf": {"en": "{path}: this is a plain-text file, not a PDF",
                              "zh": "{path}：这是纯文本文件，不是PDF 文件"},
    "err.read.text_not_image": {"en": "{path}: this is a plain-text file, not an image",
                              "zh": "{path}：这是纯文本文件，不是图片"},
    "err.read.text_not_video": {"en": "{path}: this is a plain-text file, not a video",
                              "zh": "{path}：这是纯文本文件，不是视频"},
    "err.read.text_not_audio": {"en": "{path}: this is a plain-text file, not an audio file",
                              "zh": "{path}：这是纯文本文件，不是音频文件"},
    "err.read.text_not_text": {"en": "{path}: this is a plain-text file, not a text file",
                              "zh": "{path}：这是纯文本文件，不是文本文件"},
    **{f"err.read.text_not_{kind}.fix": TEXT_NOT_FIX for kind in ("pdf", "image", "video", "audio", "text")},
    "err.pdf.unreadable": {"en": "{path}: not a readable PDF ({detail})", "zh": "{path}：不是可读取的 PDF（{detail}）"},
    "err.pdf.unreadable.fix": {"en": "check that it really is a PDF (not another type renamed to .pdf); re-export or "
                                     "re-download it",
                               "zh": "请确认它确实是 PDF（而不是改了扩展名的其他文件）；重新导出或重新下载"},
    "err.pdf.encrypted": {"en": "{path}: the PDF is encrypted with a password", "zh": "{path}：PDF 有密码加密"},
    "err.pdf.encrypted.fix": {"en": "decrypt it first, e.g. `qpdf --decrypt --password=PASSWORD in.pdf out.pdf`, "
                                    "and ingest the copy",
                              "zh": "请先解密，例如 `qpdf --decrypt --password=PASSWORD in.pdf out.pdf`，再导入解密后的"
                                    "副本"},
    "err.pdf.no_pages": {"en": "{path}: the PDF has no readable pages (damaged or truncated)",
                         "zh": "{path}：PDF 没有可读取的页面（已损坏或不完整）"},
    "err.pdf.no_pages.fix": {"en": "re-download or re-export it", "zh": "请重新下载或重新导出"},
    "err.pdf.truncated": {"en": "{path}: the PDF is truncated (it ends before its %%EOF marker)",
                          "zh": "{path}：PDF 不完整（在 %%EOF 标记之前就结束了）"},
    "err.pdf.truncated.fix": {"en": "the copy is incomplete: download or copy it again", "zh": "副本不完整：请重新下载"
                                                                                               "或复制"},
    "err.image.not_image": {"en": "{path}: not an image (its content is not a known image format)",
                            "zh": "{path}：不是图片（内容不是已知的图片格式）"},
    "err.image.not_image.fix": {"en": "check the file: it may be another type with an image extension",
                                "zh": "请检查文件：它可能是带着图片扩展名的其他类型"},
    "err.image.damaged": {"en": "{path}: the image is damaged or truncated ({detail})",
                          "zh": "{path}：图片已损坏或不完整（{detail}）"},
    "err.image.damaged.fix": {"en": "the copy is damaged or incomplete: copy, download or export it again",
                              "zh": "副本已损坏或不完整：请重新复制、下载或导出"},
    "err.text.binary": {"en": "{path}: not text: its bytes are binary data, not characters",
                        "zh": "{path}：不是文本：内容是二进制数据，不是字符"},
    "err.text.binary.fix": {"en": "check what the file is (e.g. `file NAME`): it is binary data with a text extension",
                            "zh": "请检查文件的实际类型（例如 `file NAME`）：它是带着文本扩展名的二进制数据"},
    "add.reason_fix": {"en": "{reason}\n  fix: {fix}", "zh": "{reason}\n  解决方法：{fix}"},
    "err.image.too_large": {"en": "{path}: the image is {size}, above the decode limit of {limit} Mpx",
                            "zh": "{path}：图片为 {size}，超过解码上限 {limit} Mpx"},
    "err.image.too_large.fix": {"en": "to read it, set KB_IMAGE_DECODE_MAX_PIXELS={needed} (decoding it takes up to "
                                      "{memory} GB of memory), or downscale the image",
                                "zh": "如需读取，请设置 KB_IMAGE_DECODE_MAX_PIXELS={needed}（解码最多需要 {memory} GB "
                                      "内存），"
                                      "或缩小图片"},
    "err.text.too_big": {"en": "{path}: the text file is {size} MB, above the limit of {limit} MB for one text file",
                         "zh": "{path}：文本文件为 {size} MB，超过单个文本文件 {limit} MB 的上限"},
    "err.text.too_big.fix": {"en": "split it into smaller files, or set KB_TEXT_MAX_BYTES={bytes} to read it whole "
                                   "(about {chunks} chunks to embed)",
                             "zh": "请拆分成较小的文件，或设置 KB_TEXT_MAX_BYTES={bytes} 以整体读取（约 {chunks} 个片段"
                                   "需要向量化）"},
}
