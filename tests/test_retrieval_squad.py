"""Retrieval quality on real text: SQuAD passages ingested as text files, answerable questions, recall@5."""
import json

from ingest.pipeline import Ingestor
from kb.search import search


def test_squad_recall_at_5_with_bundled_embedder(test_data, open_kb, tmp_path):
    folder = test_data / "qa" / "squad_small"
    passages = [json.loads(line) for line in (folder / "passages.jsonl").read_text().splitlines() if line.strip()]
    questions = [q for q in map(json.loads, (folder / "queries.jsonl").read_text().splitlines())
                 if not q["is_impossible"]]
    corpus = tmp_path / "squad"
    corpus.mkdir()
    for p in passages:
        (corpus / (p["pid"].replace("#", "_") + ".txt")).write_text(p["text"])
    store = open_kb(chunk_chars=4000)  # one passage, one chunk: recall is measured per passage
    report = Ingestor(store.settings, store).run([corpus])
    assert report.counts()["added"] == len(passages)
    found = sum(q["gold_pid"].replace("#", "_") + ".txt" in {h.chunk.rel for h in search(store, q["question"], k=5)}
                for q in questions)
    recall = found / len(questions)
    print(f"SQuAD recall@5 = {recall:.3f} over {len(questions)} answerable questions")
    assert recall > 0.8
